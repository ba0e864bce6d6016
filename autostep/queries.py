"""Read models: workflows with their steps, jobs with their processes, as JSON-ready dicts.

Shared by the gateway's RPC and REST entrypoints and the CLI, so that every
client sees a job the same way (the shape of the ``*.updated`` events).
:func:`follow_job` and :func:`wait_for_job` poll a job until it finishes, for
the CLI's ``--follow``, ``autostep dev``, the tests and the benchmarks; the
live grid follows the ``autostep.events`` exchange instead.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, Select, bindparam, case, func, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from autostep import registry
from autostep.catalog import find_workflow, get_project, get_workflow
from autostep.events import JobFields, job_event, process_event
from autostep.exceptions import InvalidInput, JobStillRunning, NotFoundError
from autostep.models import (
    FunctionRunner,
    Job,
    JobStatus,
    Process,
    ProcessKind,
    ProcessStatus,
    Project,
    Workflow,
    WorkflowVersion,
)
from autostep.validation import Limit, check

__all__ = [
    "JOB_TREE_STATEMENT",
    "JobFilters",
    "decode_cursor",
    "encode_cursor",
    "follow_job",
    "job_owners",
    "job_page",
    "job_tree",
    "job_tree_from_rows",
    "job_view",
    "list_jobs",
    "list_projects",
    "list_versions",
    "list_workflows",
    "process_children",
    "project_view",
    "version_view",
    "wait_for_job",
    "workflow_project",
    "workflow_summary",
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
    return {
        "id": str(found.id),
        "name": found.name,
        "description": found.description,
        "versions": sorted(by_number),
        "version": {"id": str(row.id), "number": row.number, "steps": _steps(row)},
    }


def _steps(row: WorkflowVersion) -> list[dict[str, Any]]:
    """A version's steps with their transitions, from their rows, in definition order."""
    transitions: dict[str, list[dict[str, Any]]] = {}
    for transition in row.transitions:
        transitions.setdefault(transition.source, []).append(
            {"to": transition.target, "when": transition.condition}
        )
    return [
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


def workflow_summary(session: Session, workflow_id: uuid.UUID | str) -> dict[str, Any]:
    """The workflow ``workflow_id``: its project, names, version numbers and archive time."""
    found = find_workflow(session, workflow_id)
    numbers = sorted(v.number for v in found.versions)
    return {
        "id": str(found.id),
        "project_id": str(found.project_id),
        "name": found.name,
        "description": found.description,
        "version": numbers[-1] if numbers else None,
        "versions": numbers,
        "archived_at": _iso(found.archived_at),
        "created_at": found.created_at.isoformat(),
    }


def list_versions(session: Session, workflow_id: uuid.UUID | str) -> list[dict[str, Any]]:
    """The versions of workflow ``workflow_id``, oldest first, without their steps."""
    found = find_workflow(session, workflow_id)
    return [_version_head(version) for version in found.versions]


def version_view(session: Session, workflow_id: uuid.UUID | str, number: int) -> dict[str, Any]:
    """Version ``number`` of workflow ``workflow_id``: its definition as stored, and its steps."""
    found = find_workflow(session, workflow_id)
    row = next((v for v in found.versions if v.number == number), None)
    if row is None:
        raise NotFoundError(f"workflow {found.name!r} has no version {number}")
    return {**_version_head(row), "definition": row.definition, "steps": _steps(row)}


def _version_head(row: WorkflowVersion) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "workflow_id": str(row.workflow_id),
        "number": row.number,
        "start_step": row.start_step,
        "created_at": row.created_at.isoformat(),
    }


def job_view(session: Session | Connection, job_id: uuid.UUID | str) -> dict[str, Any]:
    """The job ``job_id`` with its input, timings and processes in creation order.

    Each queued process whose function has no live runner says so in
    ``waiting`` (:func:`autostep.registry.waiting_reasons`), read now.
    One statement.
    """
    job, rows = _job_with_processes(session, job_id, top_only=False)
    return {**_job_head(job), "processes": [process_event(r, _waiting(r)) for r in rows]}


def _job_with_processes(
    session: Session | Connection, job_id: uuid.UUID | str, *, top_only: bool
) -> tuple[JobFields, list[Row[Any, Any]]]:
    """The job and its processes (top-level ones only if ``top_only``), in one statement.

    Rows, not ORM objects: a read that builds no objects costs a fraction of
    the CPU. A process row carries the database's time (``now``) and, when
    queued, its function's last runner heartbeat (``last_seen``), so that
    :func:`_waiting` needs no query of its own.
    """
    rows = session.execute(
        _JOB_WITH_TOP if top_only else _JOB_WITH_ALL, {"job_id": _job_key(job_id)}
    ).all()
    if not rows:
        raise NotFoundError(f"no job {job_id}")
    return _job_and_processes(rows)


def _job_and_processes(rows: Sequence[Any]) -> tuple[JobFields, list[Any]]:
    """The job's fields and its process rows from rows of :func:`_job_statement`."""
    job = JobFields._make(rows[0][: len(JobFields._fields)])
    return job, [row for row in rows if row.id is not None]


def _job_statement(*, top_only: bool) -> Select[Any, Any]:
    joined = Process.job_id == Job.id
    if top_only:
        joined &= Process.parent_id.is_(None)
    last_seen = (
        select(func.max(FunctionRunner.heartbeat_at))
        .where(FunctionRunner.function == Process.function)
        .scalar_subquery()
    )
    order = (Process.created_at,) if top_only else (Process.created_at, Process.item_index)
    return (
        select(
            *(Job.__table__.columns[name].label(f"job_{name}") for name in JobFields._fields),
            *_SHOWN_COLUMNS,
            func.now().label("now"),
            case((Process.status == ProcessStatus.QUEUED.value, last_seen)).label("last_seen"),
        )
        .select_from(Job)
        .outerjoin(Process, joined)
        .where(Job.id == bindparam("job_id"))
        .order_by(*order)
    )


#: The columns of a process that :func:`autostep.events.process_event` shows.
_SHOWN_COLUMNS = [
    column
    for column in Process.__table__.columns
    if column.key
    in {
        *("id", "job_id", "parent_id", "kind", "step", "function", "item_index", "status"),
        *("attempt", "error", "input", "output", "reused_from", "version"),
        *("started_at", "finished_at"),
    }
]
_JOB_WITH_ALL = _job_statement(top_only=False)
_JOB_WITH_TOP = _job_statement(top_only=True)


def _process_view(process: Any, waiting: str | None) -> dict[str, Any]:
    """A process as :func:`job_tree` and :func:`process_children` show it: with its input.

    The input (what its function was called with, after the step's input
    mapping) never changes, so ``process.updated`` events leave it out, and
    so does :func:`job_view`, the websocket's snapshot, which a follower
    updates with those events.
    """
    return {**process_event(process, waiting), "input": process.input}


def _waiting(row: Row[Any, Any]) -> str | None:
    """Why the queued process of ``row`` (of :func:`_job_with_processes`) waits, if it does."""
    if row.status != ProcessStatus.QUEUED:
        return None
    return registry.waiting_reason_at(row.function, row.now, row.last_seen)


def _job_head(job: JobFields) -> dict[str, Any]:
    return {**job_event(job), "input": job.input, "created_at": job.created_at.isoformat()}


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
    filters = JobFilters(workflow_id=workflow_id, project_id=project_id)
    items: list[dict[str, Any]] = job_page(session, filters, limit=limit)["items"]
    return items


@dataclass(frozen=True)
class JobFilters:
    """Which jobs a listing shows; every filter given must hold."""

    project_id: uuid.UUID | None = None
    workflow_id: uuid.UUID | None = None
    status: str | None = None
    trigger: str | None = None
    #: Jobs created at or after this moment ...
    created_from: datetime | None = None
    #: ... and strictly before this one.
    created_until: datetime | None = None


def job_page(
    session: Session, filters: JobFilters, *, limit: int = 50, cursor: str | None = None
) -> dict[str, Any]:
    """One page of jobs, newest first: ``{"items": [...], "next": cursor or None}``.

    Keyset pagination on ``(created_at, id)``: ``cursor`` (from the page
    before, :func:`encode_cursor`) continues after its last job, so pages
    neither skip nor repeat jobs while new ones start. Each job carries its
    workflow's name. :class:`InvalidInput` naming ``cursor`` for a cursor
    this function did not make.
    """
    limit = check(Limit, limit, field="limit")
    query: Select[Job, str] = select(Job, Workflow.name).join(
        Workflow, Workflow.id == Job.workflow_id
    )
    if filters.project_id is not None:
        query = query.where(Workflow.project_id == filters.project_id)
    if filters.workflow_id is not None:
        query = query.where(Job.workflow_id == filters.workflow_id)
    if filters.status is not None:
        query = query.where(Job.status == filters.status)
    if filters.trigger is not None:
        query = query.where(Job.trigger == filters.trigger)
    if filters.created_from is not None:
        query = query.where(Job.created_at >= filters.created_from)
    if filters.created_until is not None:
        query = query.where(Job.created_at < filters.created_until)
    if cursor is not None:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(created_at, job_id))
    rows = session.execute(
        query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    ).all()
    items = [
        {**job_event(job), "workflow": name, "created_at": job.created_at.isoformat()}
        for job, name in rows[:limit]
    ]
    last = rows[limit - 1][0] if len(rows) > limit else None
    return {"items": items, "next": encode_cursor(last.created_at, last.id) if last else None}


def encode_cursor(created_at: datetime, key: uuid.UUID) -> str:
    """An opaque cursor that continues a listing after the row ``(created_at, key)``."""
    raw = f"{created_at.isoformat()}|{key}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The row a cursor of :func:`encode_cursor` continues after; :class:`InvalidInput` if bad."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, key = raw.split("|")
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:
            raise ValueError("no time zone")
        return created_at, uuid.UUID(key)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("is not a cursor from a listing of this kind", field="cursor") from None


#: Fan-out children shown with their parent in :func:`job_tree`; the rest come page by page.
CHILDREN_SHOWN = 50


def job_tree(
    session: Session | Connection, job_id: uuid.UUID | str, *, children: int = CHILDREN_SHOWN
) -> dict[str, Any]:
    """The job with its top-level processes; each fan-out with its first ``children`` children.

    Like :func:`job_view`, but a fan-out of 10,000 items costs one page of
    children: each fan-out parent carries ``children`` (``items`` in item
    order, ``total``, and ``next``, the item index to continue from with
    :func:`process_children`, or None). A job without a fan-out costs one
    statement (:data:`JOB_TREE_STATEMENT`, whose rows
    :func:`job_tree_from_rows` turns into this view; the gateway runs that
    statement on its event loop).
    """
    job, top = _job_with_processes(session, job_id, top_only=True)
    pages = {
        p.id: _children_page(session, p.id, after=None, limit=children)
        for p in top
        if p.kind == ProcessKind.FANOUT
    }
    shown = (child for page in pages.values() for child in page[0])
    waiting = registry.waiting_reasons(
        session, {c.function for c in shown if c.status == ProcessStatus.QUEUED}
    )
    return _tree(job, top, pages, waiting)


#: The one statement of :func:`job_tree` for a job without a fan-out (parameter ``job_id``).
JOB_TREE_STATEMENT = _JOB_WITH_TOP


def job_tree_from_rows(rows: Sequence[Any], job_id: uuid.UUID | str) -> dict[str, Any] | None:
    """:func:`job_tree` from the rows of :data:`JOB_TREE_STATEMENT` (rows with named columns).

    None when the job has a fan-out, whose children need reads of their own:
    call :func:`job_tree` then. :class:`NotFoundError` when there is no such job.
    """
    if not rows:
        raise NotFoundError(f"no job {job_id}")
    job, top = _job_and_processes(rows)
    if any(p.kind == ProcessKind.FANOUT for p in top):
        return None
    return _tree(job, top, {}, {})


def _tree(
    job: JobFields,
    top: Sequence[Any],
    pages: dict[uuid.UUID, tuple[list[Row[Any, Any]], int, int | None]],
    waiting: dict[str, str],
) -> dict[str, Any]:
    processes = []
    for process in top:
        view = _process_view(process, _waiting(process))
        if process.id in pages:
            items, total, following = pages[process.id]
            view["children"] = {
                "items": [_process_view(c, waiting.get(c.function)) for c in items],
                "total": total,
                "next": following,
            }
        processes.append(view)
    return {**_job_head(job), "processes": processes}


def process_children(
    session: Session,
    job_id: uuid.UUID | str,
    process_id: uuid.UUID | str,
    *,
    after: int | None = None,
    limit: int = CHILDREN_SHOWN,
) -> dict[str, Any]:
    """A page of a fan-out's children in item order, after item index ``after``.

    ``{"items": [...], "total": n, "next": index or None}``.
    """
    limit = check(Limit, limit, field="limit")
    try:
        parent = session.get(Process, uuid.UUID(str(process_id)))
    except ValueError:
        parent = None
    if parent is None or parent.job_id != _job_key(job_id):
        raise NotFoundError(f"job {job_id} has no process {process_id}")
    items, total, following = _children_page(session, parent.id, after=after, limit=limit)
    waiting = registry.waiting_reasons(
        session, {c.function for c in items if c.status == ProcessStatus.QUEUED}
    )
    return {
        "items": [_process_view(c, waiting.get(c.function)) for c in items],
        "total": total,
        "next": following,
    }


def _children_page(
    session: Session | Connection, parent_id: uuid.UUID, *, after: int | None, limit: int
) -> tuple[list[Row[Any, Any]], int, int | None]:
    """Children of ``parent_id`` after item ``after``, how many it has, and where to go on."""
    query = select(*_SHOWN_COLUMNS).where(Process.parent_id == parent_id)
    if after is not None:
        query = query.where(Process.item_index > after)
    rows = list(session.execute(query.order_by(Process.item_index).limit(limit + 1)))
    total = session.scalar(select(func.count()).where(Process.parent_id == parent_id)) or 0
    following = rows[limit - 1].item_index if len(rows) > limit else None
    return rows[:limit], total, following


def project_view(session: Session, project: str | uuid.UUID) -> dict[str, Any]:
    """One project as :func:`list_projects` shows it."""
    found = get_project(session, project)
    return next(p for p in list_projects(session) if p["id"] == str(found.id))


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


def list_workflows(
    session: Session, project: str | uuid.UUID, *, archived: bool = False
) -> list[dict[str, Any]]:
    """The workflows of ``project``, by name, with their newest version number.

    Archived workflows are left out unless ``archived``.
    """
    owner = get_project(session, project)
    newest = (
        select(func.max(WorkflowVersion.number))
        .where(WorkflowVersion.workflow_id == Workflow.id)
        .scalar_subquery()
    )
    query = select(Workflow, newest).where(Workflow.project_id == owner.id)
    if not archived:
        query = query.where(Workflow.archived_at.is_(None))
    rows = session.execute(query.order_by(Workflow.name)).all()
    return [
        {
            "id": str(workflow.id),
            "name": workflow.name,
            "description": workflow.description,
            "project_id": str(workflow.project_id),
            "version": number,
            "archived_at": _iso(workflow.archived_at),
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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _job_key(job_id: uuid.UUID | str) -> uuid.UUID:
    try:
        return uuid.UUID(str(job_id))
    except ValueError as exc:
        raise NotFoundError(f"no job {job_id!r}: not a job id") from exc
