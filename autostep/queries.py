"""Read models: workflows with their steps, jobs with their processes, as JSON-ready dicts.

Shared by the gateway's RPC and REST entrypoints and the CLI, so that every
client sees a job the same way (the shape of the ``*.updated`` events).
:func:`follow_job` and :func:`wait_for_job` poll a job until it finishes, for
the CLI's ``--follow``, ``autostep dev``, the tests and the benchmarks; the
live grid follows the ``autostep.events`` exchange instead.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from autostep import registry
from autostep.catalog import get_project, get_workflow
from autostep.events import job_event, process_event
from autostep.exceptions import JobStillRunning, NotFoundError
from autostep.models import (
    Job,
    JobStatus,
    Process,
    ProcessStatus,
    Project,
    Workflow,
    WorkflowVersion,
)
from autostep.validation import Limit, check

__all__ = [
    "follow_job",
    "job_owners",
    "job_view",
    "list_jobs",
    "list_projects",
    "list_workflows",
    "wait_for_job",
    "workflow_project",
    "workflow_view",
]

#: Seconds between two reads of a followed job's view while a process is queued.
QUEUED_REREAD_SECONDS = 5.0


def workflow_view(
    session: Session, project: str | uuid.UUID, workflow: str, version: int | None = None
) -> dict[str, Any]:
    """A workflow, its version numbers, and one version's steps (the newest by default).

    The steps and their transitions are read from their own rows, in the
    order they were defined, as a form or a graph shows them.
    """
    found = get_workflow(session, project, workflow)
    by_number = {v.number: v for v in found.versions}
    if not by_number:
        raise NotFoundError(f"workflow {workflow!r} has no version")
    row = by_number.get(max(by_number) if version is None else version)
    if row is None:
        raise NotFoundError(f"workflow {workflow!r} has no version {version}")
    transitions: dict[str, list[dict[str, Any]]] = {}
    for transition in row.transitions:
        transitions.setdefault(transition.source, []).append(
            {"to": transition.target, "when": transition.condition}
        )
    steps = [
        {
            "name": step.name,
            "function": step.function,
            "start": step.is_start,
            "config": step.config,
            "input": step.input,
            "for_each": step.for_each,
            "retries": step.retries,
            "backoff": step.backoff,
            "timeout": step.timeout,
            "next": transitions.get(step.name, []),
        }
        for step in row.steps
    ]
    return {
        "id": str(found.id),
        "name": found.name,
        "description": found.description,
        "versions": sorted(by_number),
        "version": {"id": str(row.id), "number": row.number, "steps": steps},
    }


def job_view(session: Session, job_id: uuid.UUID | str) -> dict[str, Any]:
    """The job ``job_id`` with its input, timings and processes in creation order.

    Each queued process whose function has no live runner says so in
    ``waiting`` (:func:`autostep.registry.waiting_reasons`), read now.
    """
    job = session.get(Job, _job_key(job_id))
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    processes = session.scalars(
        select(Process)
        .where(Process.job_id == job.id)
        .order_by(Process.created_at, Process.item_index)
    ).all()
    queued = {p.function for p in processes if p.status == ProcessStatus.QUEUED}
    waiting = registry.waiting_reasons(session, queued)
    return {
        **job_event(job),
        "input": job.input,
        "created_at": job.created_at.isoformat(),
        "processes": [process_event(p, waiting.get(p.function)) for p in processes],
    }


def list_jobs(
    session: Session,
    workflow_id: uuid.UUID | None = None,
    limit: int = 50,
    project_id: uuid.UUID | None = None,
) -> list[dict[str, Any]]:
    """The newest ``limit`` jobs (1 to 500), each with its workflow's name.

    Only the jobs of ``workflow_id``, or of ``project_id``, when given.
    """
    limit = check(Limit, limit, field="limit")
    query = (
        select(Job, Workflow.name)
        .join(Workflow, Workflow.id == Job.workflow_id)
        .order_by(Job.created_at.desc())
        .limit(limit)
    )
    if workflow_id is not None:
        query = query.where(Job.workflow_id == workflow_id)
    if project_id is not None:
        query = query.where(Workflow.project_id == project_id)
    return [
        {**job_event(job), "workflow": name, "created_at": job.created_at.isoformat()}
        for job, name in session.execute(query)
    ]


def job_owners(session: Session, job_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The workflow and the project of job ``job_id``; None if there is no such job."""
    row = session.execute(
        select(Job.workflow_id, Workflow.project_id)
        .join(Workflow, Workflow.id == Job.workflow_id)
        .where(Job.id == job_id)
    ).first()
    return (row[0], row[1]) if row is not None else None


def workflow_project(session: Session, workflow_id: uuid.UUID) -> uuid.UUID:
    """The project of workflow ``workflow_id``; :class:`NotFoundError` if there is none."""
    project_id = session.scalar(select(Workflow.project_id).where(Workflow.id == workflow_id))
    if project_id is None:
        raise NotFoundError(f"no workflow {workflow_id}")
    return project_id


def list_projects(session: Session) -> list[dict[str, Any]]:
    """Every project, by name, with how many workflows it has."""
    count = (
        select(func.count(Workflow.id)).where(Workflow.project_id == Project.id).scalar_subquery()
    )
    rows = session.execute(select(Project, count).order_by(Project.name)).all()
    return [
        {
            "id": str(project.id),
            "name": project.name,
            "description": project.description,
            "workflows": workflows,
            "created_at": project.created_at.isoformat(),
        }
        for project, workflows in rows
    ]


def list_workflows(session: Session, project: str | uuid.UUID) -> list[dict[str, Any]]:
    """The workflows of ``project``, by name, with their newest version number."""
    owner = get_project(session, project)
    newest = (
        select(func.max(WorkflowVersion.number))
        .where(WorkflowVersion.workflow_id == Workflow.id)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Workflow, newest).where(Workflow.project_id == owner.id).order_by(Workflow.name)
    ).all()
    return [
        {
            "id": str(workflow.id),
            "name": workflow.name,
            "description": workflow.description,
            "version": number,
            "created_at": workflow.created_at.isoformat(),
        }
        for workflow, number in rows
    ]


def follow_job(
    factory: sessionmaker[Session],
    job_id: uuid.UUID | str,
    *,
    interval: float = 0.2,
    timeout: float | None = None,
    changes: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield the job's view now and after each change, until it has finished.

    Each poll reads one small row (the job's status and, to see changes, a
    sum of row versions that grows with every change); the whole view is read
    only when that changed. While a process is queued the view is also read
    every :data:`QUEUED_REREAD_SECONDS` and yielded if it differs, so a step
    whose runner went away meanwhile comes to say what it waits for.
    With ``changes`` False only the status is polled and only the finished
    view is yielded.
    Raises :class:`JobStillRunning` after ``timeout`` seconds.
    """
    key = _job_key(job_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    changed = Job.version + (
        select(func.coalesce(func.sum(Process.version), 0))
        .where(Process.job_id == Job.id)
        .scalar_subquery()
    )
    stamp = select(Job.status, changed) if changes else select(Job.status)
    stamp = stamp.where(Job.id == key)
    seen = None
    shown: dict[str, Any] | None = None
    read_at = 0.0
    # One autocommit connection for the polls: each sees what has committed,
    # at the cost of a round trip and no transaction.
    polls = factory.kw["bind"].connect().execution_options(isolation_level="AUTOCOMMIT")
    with polls:
        while True:
            now = polls.execute(stamp).first()
            if now is None:
                raise NotFoundError(f"no job {job_id}")
            finished = JobStatus(now[0]).finished
            reread = (
                changes
                and shown is not None
                and any(p["status"] == ProcessStatus.QUEUED for p in shown["processes"])
                and time.monotonic() - read_at >= QUEUED_REREAD_SECONDS
            )
            if (changes and tuple(now) != seen) or finished or reread:
                with factory() as session:
                    view = job_view(session, key)
                read_at = time.monotonic()
                if view != shown or finished:
                    yield view
                shown = view
            seen = tuple(now)
            if finished:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise JobStillRunning(f"job {job_id} still running after {timeout}s")
            time.sleep(interval)


def wait_for_job(
    factory: sessionmaker[Session],
    job_id: uuid.UUID | str,
    *,
    timeout: float = 60.0,
    interval: float = 0.05,
) -> dict[str, Any]:
    """The job's view once it has finished; :class:`JobStillRunning` after ``timeout`` s."""
    *_, final = follow_job(factory, job_id, interval=interval, timeout=timeout, changes=False)
    return final


def _job_key(job_id: uuid.UUID | str) -> uuid.UUID:
    try:
        return uuid.UUID(str(job_id))
    except ValueError as exc:
        raise NotFoundError(f"no job {job_id!r}: not a job id") from exc
