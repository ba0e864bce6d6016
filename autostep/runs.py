"""Runs: start jobs, and move them on when a process finishes or fails.

This is the engine. The trigger (CLI, RPC, later cron and webhooks) calls
:func:`start_job`; the function runner calls :func:`claim_step` before a
step's function and :func:`complete_process` or :func:`fail_attempt` after it.

Every function here runs inside the caller's transaction and writes, with the
rows it changes, the outbox rows that announce them: step messages for the
next processes and ``job.updated`` / ``process.updated`` events. Each one
locks the job row before it writes to the outbox, so the transactions of one
job commit one after another and their outbox ``seq`` follows commit order.
Lock order is process, then job, then fan-out parent; keep it.

Flow of a job::

    start_job ──► process queued ──► (runner) claim_step ──► function
         ▲                                                        │
         └── next step(s) ◄── complete_process ◄── ok ────────────┤
                              fail_attempt ◄────── error ─────────┘
                              (retry later, or fail process and job)
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.orm import Session

from autostep import inbox, registry
from autostep.catalog import CompiledVersion, get_workflow, latest_version, load_version
from autostep.conditions import evaluate, evaluate_condition
from autostep.definitions import StepDefinition
from autostep.events import job_event, process_event
from autostep.exceptions import NotFoundError, PermanentError, StaleAttempt
from autostep.messages import StepMessage
from autostep.models import Job, JobStatus, Process, ProcessKind, ProcessStatus
from autostep.outbox import OutboxWriter

__all__ = [
    "claim_step",
    "complete_process",
    "fail_attempt",
    "mark_running",
    "start_job",
]


def start_job(
    session: Session,
    project: str | uuid.UUID,
    workflow: str,
    input: dict[str, Any],
    *,
    trigger: str = "api",
    version: int | None = None,
) -> Job:
    """Start a run of ``workflow`` (its latest version unless ``version``)."""
    wf = get_workflow(session, project, workflow)
    row = latest_version(session, wf.id)
    if version is not None and version != row.number:
        match = [v for v in wf.versions if v.number == version]
        if not match:
            raise NotFoundError(f"workflow {workflow!r} has no version {version}")
        row = match[0]
    compiled = load_version(session, row.id)
    job = Job(
        id=uuid.uuid4(),
        workflow_id=wf.id,
        version_id=compiled.id,
        status=JobStatus.RUNNING,
        trigger=trigger,
        input=input,
        version=1,
    )
    session.add(job)
    session.flush()
    out = OutboxWriter(session, job.id)
    out.event("job.updated", job.id, job_event(job))
    _enter_step(session, out, job, compiled, compiled.step(compiled.start_step), prev=None)
    out.flush()
    return job


def mark_running(session: Session, job_id: uuid.UUID, process_id: uuid.UUID, attempt: int) -> bool:
    """Record that ``attempt`` of a still-queued process is running.

    The runner calls it, in a transaction of its own, only for a step still
    running after ``running_mark_seconds``, so fast steps go from queued to
    succeeded in one transaction. Locks the process, then the job (the order
    every transaction here keeps). Returns whether anything changed.
    """
    table = PROCESS_TABLE
    process = session.execute(
        update(table)
        .where(
            table.c.id == process_id,
            table.c.attempt == attempt,
            table.c.status == ProcessStatus.QUEUED,
        )
        .values(status=ProcessStatus.RUNNING, started_at=func.now(), version=table.c.version + 1)
        .returning(table)
    ).first()
    if process is None:
        return False
    _lock_job(session, job_id)
    out = OutboxWriter(session, job_id)
    out.event("process.updated", process.id, process_event(process))
    out.flush()
    return True


def claim_step(
    session: Session, consumer: str, message_id: uuid.UUID, process_id: uuid.UUID, attempt: int
) -> bool:
    """Record a step message in the inbox and say whether its function should run.

    One round trip (:func:`autostep.inbox.claim`). False for a message seen
    before (a redelivery) or a stale one (the process finished, was cancelled
    with its job, or moved on to another attempt); raises
    :class:`NotFoundError` for a process this database never had. Nothing is
    locked while the function runs, so the children of a fan-out run in
    parallel; :func:`complete_process` locks and checks again.
    """
    found = inbox.claim(session, consumer, message_id, process_id)
    if not found.fresh:
        return False
    if found.status is None:
        raise NotFoundError(f"no process {process_id}")
    return found.attempt == attempt and not ProcessStatus(found.status).finished


def complete_process(
    session: Session,
    process_id: uuid.UUID,
    attempt: int,
    output: dict[str, Any],
    *,
    started_at: datetime | None = None,
) -> None:
    """``attempt`` of a process succeeded with ``output``.

    Locks the process and its job in one statement, then takes the next step
    or ends the job. Raises :class:`StaleAttempt` when the attempt was
    overtaken meanwhile, and :class:`PermanentError` when a transition or the
    next step's input cannot be evaluated; either way the caller rolls back,
    the function's own writes included.
    """
    locked = session.execute(
        select(Process, Job)
        .join(Job, Job.id == Process.job_id)
        .where(Process.id == process_id)
        .with_for_update()
    ).first()
    if locked is None:
        raise NotFoundError(f"no process {process_id}")
    process, job = locked
    if process.attempt != attempt or ProcessStatus(process.status).finished:
        raise StaleAttempt(f"attempt {attempt} of process {process.id} is stale")
    out = OutboxWriter(session, job.id)
    process.output = output
    process.error = None
    if process.started_at is None:
        process.started_at = started_at or _now()
    process.finished_at = _now()
    _set_process(out, process, ProcessStatus.SUCCEEDED)
    if not JobStatus(job.status).finished:
        version = load_version(session, job.version_id)
        if process.parent_id is None:
            _advance(session, out, job, version, process.step, output)
        else:
            _join_child(session, out, job, version, process.parent_id)
    out.flush()


def fail_attempt(
    session: Session, process_id: uuid.UUID, attempt: int, error: str, retry_in: float | None
) -> bool:
    """Attempt ``attempt`` failed; retry in ``retry_in`` seconds or fail for good.

    With ``retry_in`` None the process, its fan-out parent and the job fail,
    and the job's other unfinished processes are cancelled. Returns whether a
    retry was scheduled. A stale attempt changes nothing.
    """
    process = _lock_process(session, process_id)
    if process.attempt != attempt or ProcessStatus(process.status).finished:
        return False
    job = _lock_job(session, process.job_id)
    out = OutboxWriter(session, job.id)
    process.error = error
    if retry_in is not None and not JobStatus(job.status).finished:
        process.attempt += 1
        _set_process(out, process, ProcessStatus.QUEUED)
        version = load_version(session, job.version_id)
        out.step(_step_message(process, job, version), delay=retry_in)
        out.flush()
        return True
    process.finished_at = _now()
    _set_process(out, process, ProcessStatus.FAILED)
    if not JobStatus(job.status).finished:
        if process.parent_id is not None:
            parent = _lock_process(session, process.parent_id)
            parent.error = f"item {process.item_index} failed"
            parent.finished_at = _now()
            _set_process(out, parent, ProcessStatus.FAILED)
        _cancel_unfinished(session, out, job)
        _finish_job(out, job, JobStatus.FAILED, error=f"step {process.step!r} failed: {error}")
    out.flush()
    return False


# -- building blocks --------------------------------------------------------


def _advance(
    session: Session,
    out: OutboxWriter,
    job: Job,
    version: CompiledVersion,
    step_name: str,
    output: dict[str, Any],
) -> None:
    """Take the first transition of ``step_name`` that holds, or end the job."""
    variables = {"output": output, "input": job.input}
    for index, transition in enumerate(version.transitions(step_name)):
        field = f"{step_name}.next[{index}]"
        if transition.when is None or evaluate_condition(transition.when, variables, field=field):
            target = version.step(transition.to)
            _enter_step(session, out, job, version, target, prev=output)
            return
    _finish_job(out, job, JobStatus.SUCCEEDED, output=output)


def _enter_step(
    session: Session,
    out: OutboxWriter,
    job: Job,
    version: CompiledVersion,
    step: StepDefinition,
    prev: dict[str, Any] | None,
) -> None:
    """Queue ``step``: one process, or a fan-out parent with one child per item.

    ``prev`` is the output of the step before, None for the start step.
    """
    waiting = registry.waiting_reason(session, step.function)
    if step.for_each is None:
        process = _new_process(job, step, _step_input(step, job.input, prev))
        session.add(process)
        session.flush()
        out.event("process.updated", process.id, process_event(process, waiting))
        out.step(_step_message(process, job, version))
        return
    variables = {"input": job.input, "prev": prev or {}}
    items = evaluate(step.for_each, variables, field=f"{step.name}.for_each")
    if not isinstance(items, list):
        raise PermanentError(f"{step.name}.for_each: gave {type(items).__name__}, not a list")
    parent = _new_process(job, step, {"items": items})
    parent.kind = ProcessKind.FANOUT
    parent.status = ProcessStatus.RUNNING
    parent.started_at = _now()
    parent.pending = len(items)
    session.add(parent)
    session.flush()
    out.event("process.updated", parent.id, process_event(parent))
    if not items:
        parent.output = {"items": []}
        parent.finished_at = _now()
        _set_process(out, parent, ProcessStatus.SUCCEEDED)
        _advance(session, out, job, version, step.name, parent.output)
        return
    children = []
    for index, item in enumerate(items):
        data = _step_input(step, job.input, prev, item=item, index=index)
        child = _new_process(job, step, data, parent_id=parent.id, item_index=index)
        children.append(child)
    session.add_all(children)
    session.flush()
    for child in children:
        out.event("process.updated", child.id, process_event(child, waiting))
        out.step(_step_message(child, job, version))


def _join_child(
    session: Session,
    out: OutboxWriter,
    job: Job,
    version: CompiledVersion,
    parent_id: uuid.UUID,
) -> None:
    """One child of a fan-out finished; the last one completes the parent."""
    parent = _lock_process(session, parent_id)
    assert parent.pending is not None
    parent.pending -= 1
    if parent.pending > 0:
        return
    outputs = session.scalars(
        select(Process.output).where(Process.parent_id == parent.id).order_by(Process.item_index)
    ).all()
    parent.output = {"items": list(outputs)}
    parent.finished_at = _now()
    _set_process(out, parent, ProcessStatus.SUCCEEDED)
    _advance(session, out, job, version, parent.step, parent.output)


def _step_input(
    step: StepDefinition,
    job_input: dict[str, Any],
    prev: dict[str, Any] | None,
    *,
    item: Any = None,
    index: int | None = None,
) -> dict[str, Any]:
    """The input of a step.

    With an ``input`` mapping: the step's config overlaid with the mapped
    fields. Without: what flows in (the job's input for the start step, the
    step before's output, or a fan-out item) overlaid with the config.
    """
    if step.input is not None:
        variables: dict[str, Any] = {"input": job_input, "prev": prev or {}}
        if index is not None:
            variables.update(item=item, index=index)
        mapped = {
            key: evaluate(source, variables, field=f"{step.name}.input.{key}")
            for key, source in step.input.items()
        }
        return {**step.config, **mapped}
    if index is not None:
        return {**step.config, **(item if isinstance(item, dict) else {"item": item})}
    flowing = job_input if prev is None else prev
    return {**flowing, **step.config}


def _new_process(
    job: Job,
    step: StepDefinition,
    data: dict[str, Any],
    *,
    parent_id: uuid.UUID | None = None,
    item_index: int | None = None,
) -> Process:
    return Process(
        id=uuid.uuid4(),
        job_id=job.id,
        parent_id=parent_id,
        kind=ProcessKind.TASK,
        step=step.name,
        function=step.function,
        item_index=item_index,
        status=ProcessStatus.QUEUED,
        attempt=1,
        input=data,
        version=1,
    )


def _step_message(process: Process, job: Job, version: CompiledVersion) -> StepMessage:
    """The message that runs the current attempt of ``process``."""
    return StepMessage(
        process_id=process.id,
        job_id=job.id,
        step=process.step,
        function=process.function,
        attempt=process.attempt,
        input=process.input,
        policy=version.step(process.step).policy(),
    )


#: Core table for the one-statement running mark (rows, not ORM objects).
PROCESS_TABLE: Table = Process.__table__  # type: ignore[assignment]


def _cancel_unfinished(session: Session, out: OutboxWriter, job: Job) -> None:
    unfinished = [ProcessStatus.QUEUED, ProcessStatus.RUNNING]
    rows = session.scalars(
        update(Process)
        .where(Process.job_id == job.id, Process.status.in_(unfinished))
        .values(status=ProcessStatus.CANCELLED, finished_at=_now(), version=Process.version + 1)
        .returning(Process),
        execution_options={"synchronize_session": "fetch"},
    ).all()
    for row in rows:
        out.event("process.updated", row.id, process_event(row))


def _finish_job(
    out: OutboxWriter,
    job: Job,
    status: JobStatus,
    *,
    output: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    job.status = status
    job.output = output
    job.error = error
    job.finished_at = _now()
    job.version += 1
    out.event("job.updated", job.id, job_event(job))


def _set_process(out: OutboxWriter, process: Process, status: ProcessStatus) -> None:
    process.status = status
    process.version += 1
    out.event("process.updated", process.id, process_event(process))


def _lock_job(session: Session, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job


def _lock_process(session: Session, process_id: uuid.UUID) -> Process:
    process = session.get(Process, process_id, with_for_update=True, populate_existing=True)
    if process is None:
        raise NotFoundError(f"no process {process_id}")
    return process


def _now() -> datetime:
    return datetime.now(UTC)
