"""Runs: start jobs, and move them on when a process finishes or fails.

This is the engine. The trigger (CLI, RPC, later cron and webhooks) calls
:func:`start_job`; the function runner calls :func:`claim_step` before a
step's function and :func:`complete_process` or :func:`fail_attempt` after it.
Users stop a job with :func:`cancel_job` and repeat a failed or cancelled
one from where it stopped with :func:`rerun_job`.

Every function here runs inside the caller's transaction and writes, with the
rows it changes, the outbox rows that announce them: step messages for the
next processes and ``job.updated`` / ``process.updated`` events.

**Lock order: the trigger row, then the workflow row, then the job row, then
its process rows** (a process, then its fan-out parent). A cron tick
(:func:`autostep.firing.fire_tick`) locks its trigger first. Starting or
rerunning a run share-locks its workflow row first (so archiving waits for it
and then sees it); every other function below takes the job's lock as its
first lock. No
transaction locks a process row without holding its job's lock, so the
transactions of one job run one after another: they cannot deadlock, and
their outbox ``seq`` follows commit order. Keep it that way.

A job may enter at most ``max_steps`` steps (a workflow setting, 10,000 by
default; fan-out children and retries are not counted, their list and retry
policy bound them), so a loop whose condition never turns ends the job with
an error instead of running forever.

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

from autostep import completion, inbox, registry
from autostep.catalog import (
    CompiledVersion,
    load_version,
    lock_active_workflow,
    lock_start_version,
)
from autostep.completion import Completed, Completion, check_budget, next_step, step_input
from autostep.conditions import evaluate
from autostep.definitions import StepDefinition
from autostep.events import JobFields, job_event, process_event
from autostep.exceptions import ConflictError, InvalidInput, NotFoundError, PermanentError
from autostep.messages import StepMessage
from autostep.models import Job, JobStatus, Process, ProcessKind, ProcessStatus
from autostep.outbox import OutboxWriter, withdraw_steps
from autostep.starts import NewRuns, fans_out
from autostep.validation import JobInput, check

__all__ = [
    "cancel_job",
    "claim_step",
    "claim_steps",
    "complete_process",
    "complete_processes",
    "fail_attempt",
    "mark_running",
    "rerun_job",
    "start_job",
    "start_with_orm",
]


def start_job(
    session: Session,
    project: str | uuid.UUID,
    workflow: str,
    input: dict[str, Any],
    *,
    trigger: str = "api",
    version: int | None = None,
    trigger_id: uuid.UUID | None = None,
) -> JobFields:
    """Start a run of ``workflow`` (its latest version unless ``version``); the job as started.

    ``trigger`` says what started it (``api``, ``cli``, ``cron``, ...);
    ``trigger_id`` names the trigger row when one did (:mod:`autostep.firing`).

    :class:`ConflictError` for an archived workflow; the workflow row is
    share-locked until commit, so archiving waits and then sees this run.
    :class:`InvalidInput` naming ``input`` when the start step cannot take
    it (its ``input`` mapping or ``for_each`` reads what ``input`` lacks);
    the caller rolls back, so nothing of the run is written.
    Two statements (:mod:`autostep.starts`), unless the start step fans out.
    """
    input = check(JobInput, input, field="input")
    compiled = lock_start_version(session, project, workflow, version)
    try:
        if fans_out(compiled):
            return start_with_orm(session, compiled, trigger, input, trigger_id=trigger_id)
        new = NewRuns(session)
        job = new.add(compiled, trigger, input, trigger_id=trigger_id)
        new.write()
        return job
    except PermanentError as exc:
        # The caller's value, not a step, is at fault: refuse the start.
        raise InvalidInput(f"the start step cannot take it: {exc}", field="input") from None


def start_with_orm(
    session: Session,
    version: CompiledVersion,
    trigger: str,
    input: dict[str, Any],
    *,
    trigger_id: uuid.UUID | None = None,
) -> JobFields:
    """Start a run of ``version`` through the ORM, whatever its start step.

    :func:`start_job`'s path for a start step that fans out; the two-statement
    path starts every other run with the same rows and messages. The
    workflow must be share-locked and ``input`` checked already.
    """
    job, out = _new_job(
        session, version.workflow_id, version.id, trigger, input, trigger_id=trigger_id
    )
    _enter_step(session, out, job, version, version.step(version.start_step), prev=None)
    out.flush()
    session.flush()
    return _fields(job)


def cancel_job(session: Session, job_id: uuid.UUID | str) -> Job:
    """Cancel a running job; a finished one is returned unchanged.

    Its queued and retrying processes are cancelled and their unsent step
    messages withdrawn. A step running right now finishes its function, but
    its transaction finds the process cancelled and rolls back, the
    function's own writes included. Cancelling twice changes nothing.
    """
    job = _lock_job(session, _job_key(job_id))
    if JobStatus(job.status).finished:
        return job
    out = OutboxWriter(session, job.id)
    _cancel_unfinished(session, out, job)
    _finish_job(out, job, JobStatus.CANCELLED, error="cancelled")
    out.flush()
    return job


def rerun_job(session: Session, job_id: uuid.UUID | str, *, trigger: str = "api") -> Job:
    """A new job of the same version that goes on where the failed or cancelled one stopped.

    The steps that succeeded are not run again: their processes are copied
    with their committed outputs (``reused_from`` names the original). The
    step that failed or was cancelled runs again with the input it had; in a
    fan-out only the children that did not succeed run again. The new job's
    ``rerun_of`` names the original. :class:`ConflictError` for a job that is
    still running or succeeded, or that failed outside any step (a
    transition, or its step budget), which the same version would repeat,
    and for a job of an archived workflow.
    """
    source = session.get(Job, _job_key(job_id))
    if source is None:
        raise NotFoundError(f"no job {job_id}")
    status = JobStatus(source.status)
    if not status.finished:
        raise ConflictError(f"job {source.id} is still running: cancel it or let it finish first")
    if status is JobStatus.SUCCEEDED:
        raise ConflictError(f"job {source.id} succeeded: there is nothing to rerun")
    processes = session.scalars(
        select(Process)
        .where(Process.job_id == source.id)
        .order_by(Process.created_at, Process.item_index)
    ).all()
    stopped = (ProcessStatus.FAILED, ProcessStatus.CANCELLED)
    if not any(p.parent_id is None and p.status in stopped for p in processes):
        raise ConflictError(
            f"job {source.id} failed outside its steps ({source.error}); the same version "
            "would fail the same way: publish a fix and start a new run"
        )
    lock_active_workflow(session, source.workflow_id)
    version = load_version(session, source.version_id)
    job, out = _new_job(
        session, source.workflow_id, source.version_id, trigger, source.input, rerun_of=source.id
    )
    children: dict[uuid.UUID, list[Process]] = {}
    for process in processes:
        if process.parent_id is not None:
            children.setdefault(process.parent_id, []).append(process)
    for process in processes:
        if process.parent_id is not None or process.status not in (
            ProcessStatus.SUCCEEDED,
            *stopped,
        ):
            continue
        job.steps += 1
        if process.status == ProcessStatus.SUCCEEDED:
            copy = _reused(job, process)
            session.add(copy)
            session.add_all(
                _reused(job, child, parent=copy) for child in children.get(process.id, [])
            )
        else:
            _enter_again(session, out, job, version, process, children.get(process.id, []))
    session.flush()
    for process in session.scalars(
        select(Process).where(Process.job_id == job.id, Process.reused_from.is_not(None))
    ):
        out.event("process.updated", process.id, process_event(process))
    out.flush()
    return job


def mark_running(session: Session, job_id: uuid.UUID, process_id: uuid.UUID, attempt: int) -> bool:
    """Record that ``attempt`` of a still-queued process is running.

    The runner calls it, in a transaction of its own, only for a step still
    running after ``running_mark_seconds``, so fast steps go from queued to
    succeeded in one transaction. Locks the job, then the process. Returns
    whether anything changed.
    """
    table = PROCESS_TABLE
    _lock_job(session, job_id)
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
    out = OutboxWriter(session, job_id)
    out.event("process.updated", process.id, process_event(process))
    out.flush()
    return True


def claim_step(
    session: Session,
    consumer: str,
    message_id: uuid.UUID,
    process_id: uuid.UUID,
    attempt: int,
    *,
    consumed: uuid.UUID | None = None,
) -> bool:
    """Record a step message in the inbox and say whether its function should run.

    One round trip (:func:`autostep.inbox.claim`). False for a message seen
    before (a redelivery) or a stale one (the process finished, was cancelled
    with its job, or moved on to another attempt); raises
    :class:`NotFoundError` for a process this database never had. Nothing is
    locked while the function runs, so the children of a fan-out run in
    parallel; :func:`complete_process` locks and checks again. With
    ``consumed``, the same statement deletes that outbox row (a step run
    straight from its row, without the broker).
    """
    found = inbox.claim(session, consumer, message_id, process_id, consumed=consumed)
    if not found.fresh:
        return False
    if found.status is None:
        raise NotFoundError(f"no process {process_id}")
    return found.attempt == attempt and not ProcessStatus(found.status).finished


def claim_steps(
    session: Session, consumer: str, messages: list[tuple[uuid.UUID, uuid.UUID, int]]
) -> list[bool | None]:
    """:func:`claim_step` for several (message id, process id, attempt) at once.

    One statement (:func:`autostep.inbox.claim_many`); for each, in order,
    whether its function should run, or None for a process this database
    never had. The message ids must differ.
    """
    found = inbox.claim_many(session, consumer, [(m, p) for m, p, _ in messages])
    return [
        None
        if claim.fresh and claim.status is None
        else claim.fresh
        and claim.attempt == attempt
        and not ProcessStatus(str(claim.status)).finished
        for claim, (_, _, attempt) in zip(found, messages, strict=True)
    ]


def complete_process(
    session: Session,
    process_id: uuid.UUID,
    attempt: int,
    output: dict[str, Any],
    *,
    started_at: datetime | None = None,
) -> None:
    """``attempt`` of a process succeeded with ``output``.

    Locks the job, then the process, then takes the next step or ends the
    job. Raises :class:`StaleAttempt` when the attempt was overtaken
    meanwhile (a retry, or the job was cancelled or failed): the caller
    rolls back, the function's own writes included. When a transition or
    the next step's input cannot be evaluated, the process keeps its output
    (its function succeeded) and the job fails with that transition's error.
    """
    complete_processes(session, [Completion(process_id, attempt, output, started_at)])


def complete_processes(
    session: Session,
    completions: list[Completion],
    *,
    also_lock: list[uuid.UUID] | None = None,
) -> None:
    """:func:`complete_process` for each of ``completions``, in one go.

    Their jobs, then their processes, are locked in one statement, each in
    id order, with the jobs and rows of the processes ``also_lock`` names (a
    group's failures, which :func:`fail_attempt` records afterwards). The
    common cases (a step followed by a plain step or the job's end, a
    fan-out child that is not the last) take :mod:`autostep.completion`'s
    two statements, for all of them together; the rest goes through the ORM
    below. Raises :class:`StaleAttempt` when any attempt was overtaken.
    """
    done = completion.complete(session, completions, also_lock=also_lock)
    for item, (what, locked) in zip(completions, done, strict=True):
        if what is Completed.DONE:
            continue
        if what is Completed.JOIN_PARENT:
            # this process is written and its parent's count is down to 0: join it
            assert locked.parent_id is not None
            job = _lock_job(session, locked.job_id)
            out = OutboxWriter(session, job.id)
            version = load_version(session, job.version_id)
            _join_finished(session, out, job, version, _lock_process(session, locked.parent_id))
            out.flush()
            continue
        job, process = _lock_job_and_process(session, item.process_id)
        out = OutboxWriter(session, job.id)
        process.output = item.output
        process.error = None
        if process.started_at is None:
            process.started_at = item.started_at or _now()
        process.finished_at = _now()
        _set_process(out, process, ProcessStatus.SUCCEEDED)
        if not JobStatus(job.status).finished:
            version = load_version(session, job.version_id)
            if process.parent_id is None:
                _advance(session, out, job, version, process.step, item.output)
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
    job, process = _lock_job_and_process(session, process_id)
    if process.attempt != attempt or ProcessStatus(process.status).finished:
        return False
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


def _new_job(
    session: Session,
    workflow_id: uuid.UUID,
    version_id: uuid.UUID,
    trigger: str,
    input: dict[str, Any],
    *,
    rerun_of: uuid.UUID | None = None,
    trigger_id: uuid.UUID | None = None,
) -> tuple[Job, OutboxWriter]:
    """Insert a running job, announce it, and return it with its outbox writer."""
    fields = completion.new_job(workflow_id, version_id, trigger, input, rerun_of=rerun_of)
    values = fields._asdict()
    del values["created_at"]  # the database's clock, as for every row
    job = Job(**values, trigger_id=trigger_id)
    session.add(job)
    session.flush()
    out = OutboxWriter(session, job.id)
    out.event("job.updated", job.id, job_event(job))
    return job, out


def _advance(
    session: Session,
    out: OutboxWriter,
    job: Job,
    version: CompiledVersion,
    step_name: str,
    output: dict[str, Any],
) -> None:
    """Take the first transition of ``step_name`` that holds, or end the job.

    When a condition, the next step's input or its fan-out list cannot be
    evaluated, or the step budget is spent, the job fails with that error;
    ``step_name``'s process keeps its output: its function did not fail.
    """
    try:
        target = next_step(version, step_name, output, job.input)
        if target is not None:
            _enter_step(session, out, job, version, target, prev=output)
            return
    except PermanentError as exc:
        _finish_job(out, job, JobStatus.FAILED, error=f"after step {step_name!r}: {exc}")
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
    Everything is evaluated before anything is written: a
    :class:`PermanentError` (a bad expression, the step budget spent)
    leaves no row behind.
    """
    check_budget(job.steps, version)
    job.steps += 1
    where = version.field(step.name)
    waiting = registry.waiting_reason(session, step.function)
    if step.for_each is None:
        process = _new_process(job, step, step_input(step, where, job.input, prev))
        session.add(process)
        session.flush()
        out.event("process.updated", process.id, process_event(process, waiting))
        out.step(_step_message(process, job, version))
        return
    variables = {"input": job.input, "prev": prev or {}}
    items = evaluate(step.for_each, variables, field=f"{where}.for_each")
    if not isinstance(items, list):
        raise PermanentError(f"{where}.for_each: gave {type(items).__name__}, not a list")
    inputs = [
        step_input(step, where, job.input, prev, item=item, index=index)
        for index, item in enumerate(items)
    ]
    parent = _new_fanout_parent(session, out, job, step, {"items": items}, pending=len(items))
    if not items:
        parent.output = {"items": []}
        parent.finished_at = _now()
        _set_process(out, parent, ProcessStatus.SUCCEEDED)
        _advance(session, out, job, version, step.name, parent.output)
        return
    children = [
        _new_process(job, step, data, parent_id=parent.id, item_index=index)
        for index, data in enumerate(inputs)
    ]
    session.add_all(children)
    session.flush()
    for child in children:
        out.event("process.updated", child.id, process_event(child, waiting))
        out.step(_step_message(child, job, version))


def _new_fanout_parent(
    session: Session,
    out: OutboxWriter,
    job: Job,
    step: StepDefinition,
    data: dict[str, Any],
    *,
    pending: int,
) -> Process:
    """Insert and announce a running fan-out parent waiting for ``pending`` children."""
    parent = _new_process(job, step, data)
    parent.kind = ProcessKind.FANOUT
    parent.status = ProcessStatus.RUNNING
    parent.started_at = _now()
    parent.pending = pending
    session.add(parent)
    session.flush()
    out.event("process.updated", parent.id, process_event(parent))
    return parent


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
    _join_finished(session, out, job, version, parent)


def _join_finished(
    session: Session, out: OutboxWriter, job: Job, version: CompiledVersion, parent: Process
) -> None:
    """Every child of ``parent`` succeeded: it succeeds with their outputs, in order."""
    outputs = session.scalars(
        select(Process.output).where(Process.parent_id == parent.id).order_by(Process.item_index)
    ).all()
    parent.output = {"items": list(outputs)}
    parent.finished_at = _now()
    _set_process(out, parent, ProcessStatus.SUCCEEDED)
    _advance(session, out, job, version, parent.step, parent.output)


def _new_process(
    job: Job,
    step: StepDefinition,
    data: dict[str, Any],
    *,
    parent_id: uuid.UUID | None = None,
    item_index: int | None = None,
) -> Process:
    task = completion.new_task(job.id, step, data, parent_id=parent_id, item_index=item_index)
    return Process(**task._asdict(), input=data)


def _step_message(process: Process, job: Job, version: CompiledVersion) -> StepMessage:
    """The message that runs the current attempt of ``process``."""
    return completion.step_message(process, process.input, version.step(process.step).policy())


def _reused(job: Job, original: Process, *, parent: Process | None = None) -> Process:
    """A succeeded process of an earlier job, carried into the rerun ``job`` as it was."""
    return Process(
        id=uuid.uuid4(),
        job_id=job.id,
        parent_id=parent.id if parent is not None else None,
        kind=original.kind,
        step=original.step,
        function=original.function,
        item_index=original.item_index,
        status=ProcessStatus.SUCCEEDED,
        attempt=original.attempt,
        input=original.input,
        output=original.output,
        pending=0 if original.pending is not None else None,
        reused_from=original.id,
        version=1,
        created_at=original.created_at,
        started_at=original.started_at,
        finished_at=original.finished_at,
    )


def _enter_again(
    session: Session,
    out: OutboxWriter,
    job: Job,
    version: CompiledVersion,
    stopped: Process,
    children: list[Process],
) -> None:
    """Queue again a step that failed or was cancelled, with the input it had.

    A fan-out keeps the children that succeeded (reused) and queues the others.
    """
    step = version.step(stopped.step)
    waiting = registry.waiting_reason(session, step.function)
    if stopped.kind != ProcessKind.FANOUT:
        process = _new_process(job, step, stopped.input)
        session.add(process)
        session.flush()
        out.event("process.updated", process.id, process_event(process, waiting))
        out.step(_step_message(process, job, version))
        return
    again = [child for child in children if child.status != ProcessStatus.SUCCEEDED]
    parent = _new_fanout_parent(session, out, job, step, stopped.input, pending=len(again))
    kept = [
        _reused(job, child, parent=parent)
        for child in children
        if child.status == ProcessStatus.SUCCEEDED
    ]
    queued = [
        _new_process(job, step, child.input, parent_id=parent.id, item_index=child.item_index)
        for child in again
    ]
    session.add_all([*kept, *queued])
    session.flush()
    for child in queued:
        out.event("process.updated", child.id, process_event(child, waiting))
        out.step(_step_message(child, job, version))
    if not again:
        _join_finished(session, out, job, version, parent)


#: Core table for the one-statement running mark (rows, not ORM objects).
PROCESS_TABLE: Table = Process.__table__  # type: ignore[assignment]


def _cancel_unfinished(session: Session, out: OutboxWriter, job: Job) -> None:
    """Cancel the job's queued and running processes and withdraw their unsent messages.

    The caller holds the job's lock, so no other transaction holds these rows.
    """
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
    withdraw_steps(session, [row.id for row in rows])


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


def _lock_job_and_process(session: Session, process_id: uuid.UUID) -> tuple[Job, Process]:
    """Lock the job of ``process_id``, then the process (the lock order)."""
    owner = select(Process.job_id).where(Process.id == process_id).scalar_subquery()
    job = session.scalars(
        select(Job).where(Job.id == owner).with_for_update(),
        execution_options={"populate_existing": True},
    ).first()
    if job is None:
        raise NotFoundError(f"no process {process_id}")
    return job, _lock_process(session, process_id)


def _lock_process(session: Session, process_id: uuid.UUID) -> Process:
    process = session.get(Process, process_id, with_for_update=True, populate_existing=True)
    if process is None:
        raise NotFoundError(f"no process {process_id}")
    return process


def _fields(job: Job) -> JobFields:
    """A job's columns, as the statements of the hot paths read them."""
    return JobFields(*(getattr(job, name) for name in JobFields._fields))


def _job_key(job_id: uuid.UUID | str) -> uuid.UUID:
    try:
        return uuid.UUID(str(job_id))
    except ValueError as exc:
        raise NotFoundError(f"no job {job_id!r}: not a job id") from exc


def _now() -> datetime:
    return datetime.now(UTC)
