"""The function runner's hot path: a step's completion in two statements.

:func:`autostep.runs.complete_process` hands every completion here first.
On the session's own psycopg connection, inside the step's transaction:

1. one statement locks the job, then the process (the engine's lock order),
   and reads both;
2. Python decides what comes next, as :mod:`autostep.runs` would: the next
   step's process and message, the end of the job, or its failure;
3. one statement writes it all: the process succeeded, its fan-out parent's
   ``pending`` counted down, the job's step count or end, the new process,
   and the outbox rows (events and the step message, in ``seq`` order).

Both statements are prepared on the server and have a fixed shape. No ORM
object is built, so a step costs two round trips and little CPU besides its
commit. Everything else stays with :mod:`autostep.runs`: what this module
does not cover (entering a fan-out, the last child of a fan-out, a job
already finished) it leaves, untouched or half-done in the same transaction,
to the ORM path, which locks again (it holds the locks already) and carries
on where this left off.
"""

from __future__ import annotations

import enum
import json
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy.orm import Session

from autostep import registry
from autostep.catalog import CompiledVersion, load_version
from autostep.conditions import evaluate, evaluate_condition
from autostep.definitions import StepDefinition
from autostep.events import JobFields, ProcessFields, job_event, process_event
from autostep.exceptions import NotFoundError, PermanentError, StaleAttempt
from autostep.messages import StepMessage
from autostep.models import JobStatus, Process, ProcessKind, ProcessStatus
from autostep.outbox import OutboxWriter

__all__ = [
    "INSERT_BORN",
    "INSERT_SENT",
    "Completed",
    "check_budget",
    "compact_json",
    "complete",
    "new_job",
    "new_task",
    "next_step",
    "step_input",
    "step_message",
    "task_row",
]

#: A CTE that inserts the new processes of the JSON array ``%(born)s`` (rows of :func:`task_row`).
INSERT_BORN = """born AS (
    INSERT INTO process (id, job_id, kind, step, function, status, attempt, input, version)
    SELECT r.id, r.job_id, r.kind, r.step, r.function, r.status, r.attempt, r.input, r.version
    FROM jsonb_to_recordset(%(born)s) AS r(
        id uuid, job_id uuid, kind text, step text, function text, status text,
        attempt int, input jsonb, version int))"""
#: A CTE that inserts the outbox rows of the JSON array ``%(outbox)s``, in its order
#: (``seq``); a row without ``available_at`` is due at once.
INSERT_SENT = """sent AS (
    INSERT INTO outbox (id, shard, attempts, aggregate_type, aggregate_id, type, exchange,
                        routing_key, mandatory, payload, available_at)
    SELECT r.id, r.shard, r.attempts, r.aggregate_type, r.aggregate_id, r.type, r.exchange,
           r.routing_key, r.mandatory, r.payload, coalesce(r.available_at, now())
    FROM jsonb_array_elements(%(outbox)s) WITH ORDINALITY AS e(value, n),
         LATERAL jsonb_populate_record(NULL::outbox, e.value) AS r
    ORDER BY e.n)"""
#: Lock the job, then the process; the job's row is locked before the
#: process's is read for update, whatever plan PostgreSQL picks.
_LOCK = """
WITH j AS MATERIALIZED (
    SELECT id, workflow_id, version_id, status, trigger, rerun_of, steps, output, error,
           version, finished_at, input, created_at
    FROM job WHERE id = (SELECT job_id FROM process WHERE id = %(id)s)
    FOR UPDATE)
SELECT j.*, p.id, p.job_id, p.parent_id, p.kind, p.step, p.function, p.item_index,
       p.status, p.attempt, p.error, p.output, p.reused_from, p.version, p.started_at,
       p.finished_at
FROM j JOIN process AS p ON p.job_id = j.id AND p.id = %(id)s
FOR UPDATE OF p
"""
_WRITE = f"""
WITH done AS (
    UPDATE process SET status = %(status)s, output = %(output)s, error = NULL,
                       started_at = %(started_at)s, finished_at = %(finished_at)s,
                       version = %(version)s
    WHERE id = %(id)s),
parent AS (
    UPDATE process SET pending = pending - 1 WHERE id = %(parent_id)s RETURNING pending),
job_changed AS (
    UPDATE job SET steps = %(steps)s, status = %(job_status)s, output = %(job_output)s,
                   error = %(job_error)s, finished_at = %(job_finished_at)s,
                   version = %(job_version)s
    WHERE id = %(job_id)s AND %(job_changed)s),
{INSERT_BORN},
{INSERT_SENT}
SELECT (SELECT pending FROM parent)
"""


class Completed(enum.Enum):
    """What :func:`complete` did."""

    #: Everything: the caller commits.
    DONE = "done"
    #: Nothing but the locks: the ORM path does it all.
    NOT_HERE = "not here"
    #: The process and its parent's count: the last child of a fan-out; the
    #: ORM path joins the parent (:func:`autostep.runs.complete_process`).
    JOIN_PARENT = "join parent"


class _Next(NamedTuple):
    """What follows a step: a process to enter, or the job's end."""

    step: StepDefinition | None
    input: dict[str, Any] | None
    job_status: JobStatus | None
    job_error: str | None = None


def complete(
    session: Session,
    process_id: uuid.UUID,
    attempt: int,
    output: dict[str, Any],
    started_at: datetime | None,
) -> tuple[Completed, ProcessFields]:
    """Complete ``attempt`` of a process with ``output`` in two statements, if it can.

    Returns what it did and the process as it was locked. Raises
    :class:`StaleAttempt` when the attempt was overtaken, :class:`NotFoundError`
    for a process the database never had.
    """
    connection = _driver(session)
    with connection.cursor() as cursor:
        cursor.execute(_LOCK, {"id": process_id}, prepare=True)
        found = cursor.fetchone()
    if found is None:
        raise NotFoundError(f"no process {process_id}")
    job, process = JobFields(*found[:13]), ProcessFields(*found[13:])
    if process.attempt != attempt or ProcessStatus(process.status).finished:
        raise StaleAttempt(f"attempt {attempt} of process {process.id} is stale")
    if JobStatus(job.status).finished:
        return Completed.NOT_HERE, process
    version = load_version(session, job.version_id)
    following = None
    if process.parent_id is None:
        following = _next(session, job, version, process.step, output)
        if following is None:
            return Completed.NOT_HERE, process
    now = datetime.now(UTC)
    done = process._replace(
        status=ProcessStatus.SUCCEEDED,
        output=output,
        error=None,
        started_at=process.started_at or started_at or now,
        finished_at=now,
        version=process.version + 1,
    )
    out = OutboxWriter(session, job.id)
    out.event("process.updated", done.id, process_event(done))
    born: list[dict[str, Any]] = []
    changed = job
    if following is not None:
        changed, born = _follow(session, out, job, version, following, output, now)
    pending = _write(connection, done, job, changed, born, out)
    if process.parent_id is not None and pending == 0:
        return Completed.JOIN_PARENT, process
    return Completed.DONE, process


def next_step(
    version: CompiledVersion, step_name: str, output: dict[str, Any], job_input: Any
) -> StepDefinition | None:
    """The step that the first transition of ``step_name`` that holds leads to.

    None when none holds: the job ends with ``output``. The transitions are
    tried in order with the variables ``output`` and ``input`` (the job's);
    :class:`PermanentError` naming the transition (``steps[i].next[j].when``)
    when a condition cannot be evaluated. The one place a transition is
    chosen, for the engine and for the runner's hot path alike.
    """
    variables = {"output": output, "input": job_input}
    where = version.field(step_name)
    for index, transition in enumerate(version.transitions(step_name)):
        field = f"{where}.next[{index}].when"
        if transition.when is None or evaluate_condition(transition.when, variables, field=field):
            return version.step(transition.to)
    return None


def _next(
    session: Session,
    job: JobFields,
    version: CompiledVersion,
    step_name: str,
    output: dict[str, Any],
) -> _Next | None:
    """What follows ``step_name``, as :func:`autostep.runs` decides it; None for a fan-out."""
    try:
        target = next_step(version, step_name, output, job.input)
        if target is None:
            return _Next(None, None, JobStatus.SUCCEEDED)
        if target.for_each is not None:
            return None
        check_budget(job.steps, version)
        data = step_input(target, version.field(target.name), job.input, output)
        return _Next(target, data, None)
    except PermanentError as exc:
        return _Next(None, None, JobStatus.FAILED, f"after step {step_name!r}: {exc}")


def _follow(
    session: Session,
    out: OutboxWriter,
    job: JobFields,
    version: CompiledVersion,
    following: _Next,
    output: dict[str, Any],
    now: datetime,
) -> tuple[JobFields, list[dict[str, Any]]]:
    """The job as it changes, and the process to insert; their outbox rows go to ``out``."""
    if following.step is None:
        assert following.job_status is not None
        succeeded = following.job_status is JobStatus.SUCCEEDED
        changed = job._replace(
            status=following.job_status,
            output=output if succeeded else None,
            error=following.job_error,
            finished_at=now,
            version=job.version + 1,
        )
        out.event("job.updated", job.id, job_event(changed))
        return changed, []
    step, data = following.step, following.input
    assert data is not None
    process = new_task(job.id, step, data)
    waiting = registry.waiting_reason(session, step.function)
    out.event("process.updated", process.id, process_event(process, waiting))
    out.step(step_message(process, data, step.policy()))
    row = task_row(process, data)
    return job._replace(steps=job.steps + 1), [row]


def _write(
    connection: psycopg.Connection[Any],
    done: ProcessFields,
    job: JobFields,
    changed: JobFields,
    born: list[dict[str, Any]],
    out: OutboxWriter,
) -> int | None:
    """The one statement that writes a completion; the parent's pending count, if any."""
    rows = out.take()
    params = {
        "id": done.id,
        "status": str(done.status),
        "output": Jsonb(done.output),
        "started_at": done.started_at,
        "finished_at": done.finished_at,
        "version": done.version,
        "parent_id": done.parent_id,
        "job_id": job.id,
        "job_changed": changed != job,
        "steps": changed.steps,
        "job_status": str(changed.status),
        "job_output": Jsonb(changed.output) if changed.output is not None else None,
        "job_error": changed.error,
        "job_finished_at": changed.finished_at,
        "job_version": changed.version,
        "born": Jsonb(born, dumps=compact_json),
        "outbox": Jsonb(rows, dumps=compact_json),
    }
    with connection.cursor() as cursor:
        cursor.execute(_WRITE, params, prepare=True)
        found = cursor.fetchone()
    return None if found is None or found[0] is None else int(found[0])


def step_input(
    step: StepDefinition,
    where: str,
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
            key: evaluate(source, variables, field=f"{where}.input.{key}")
            for key, source in step.input.items()
        }
        return {**step.config, **mapped}
    if index is not None:
        return {**step.config, **(item if isinstance(item, dict) else {"item": item})}
    flowing = job_input if prev is None else prev
    return {**flowing, **step.config}


def new_job(
    workflow_id: uuid.UUID,
    version_id: uuid.UUID,
    trigger: str,
    input: dict[str, Any],
    *,
    rerun_of: uuid.UUID | None = None,
) -> JobFields:
    """A new running job, as it is inserted and first announced (``created_at``: now here)."""
    return JobFields(
        id=uuid.uuid4(),
        workflow_id=workflow_id,
        version_id=version_id,
        status=JobStatus.RUNNING,
        trigger=trigger,
        rerun_of=rerun_of,
        steps=0,
        output=None,
        error=None,
        version=1,
        finished_at=None,
        input=input,
        created_at=datetime.now(UTC),
    )


def new_task(
    job_id: uuid.UUID,
    step: StepDefinition,
    data: dict[str, Any],
    *,
    parent_id: uuid.UUID | None = None,
    item_index: int | None = None,
) -> ProcessFields:
    """A new queued process of ``step`` with input ``data``: its first attempt."""
    return ProcessFields(
        id=uuid.uuid4(),
        job_id=job_id,
        parent_id=parent_id,
        kind=ProcessKind.TASK,
        step=step.name,
        function=step.function,
        item_index=item_index,
        status=ProcessStatus.QUEUED,
        attempt=1,
        error=None,
        output=None,
        reused_from=None,
        version=1,
        started_at=None,
        finished_at=None,
    )


def task_row(process: ProcessFields, data: dict[str, Any]) -> dict[str, Any]:
    """A new top-level process with input ``data``, as the multi-row inserts take it."""
    return {
        "id": str(process.id),
        "job_id": str(process.job_id),
        "kind": str(process.kind),
        "step": process.step,
        "function": process.function,
        "status": str(process.status),
        "attempt": process.attempt,
        "input": data,
        "version": process.version,
    }


def step_message(
    process: ProcessFields | Process, data: dict[str, Any], policy: dict[str, Any]
) -> StepMessage:
    """The message that runs the current attempt of ``process`` over ``data``."""
    return StepMessage(
        process_id=process.id,
        job_id=process.job_id,
        step=process.step,
        function=process.function,
        attempt=process.attempt,
        input=data,
        policy=policy,
    )


def check_budget(steps: int, version: CompiledVersion) -> None:
    """:class:`PermanentError` when a job that entered ``steps`` steps may enter no more.

    A job may enter at most the workflow's ``max_steps`` steps, so a loop
    whose condition never turns ends the job with an error.
    """
    if steps >= version.max_steps:
        raise PermanentError(
            f"step budget spent: {steps} steps entered, the workflow's max_steps; "
            f"does a loop never end?"
        )


def _driver(session: Session) -> psycopg.Connection[Any]:
    """The psycopg connection under ``session``, in its transaction."""
    driver = session.connection().connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


def compact_json(value: Any) -> str:
    """JSON for the multi-row statements: compact, with timestamps in ISO 8601."""
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> str:
    """Timestamps (an outbox row's ``available_at``) as ISO 8601, which PostgreSQL reads."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
