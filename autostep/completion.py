"""The function runner's hot path: completions in two statements, however many.

:func:`autostep.runs.complete_processes` hands every completion here first,
one step's or a whole group's (:mod:`autostep.functions.group`). On the
session's own psycopg connection, inside the caller's transaction:

1. one statement locks the jobs, then the processes, each in id order (the
   engine's lock order, taken the same way by every group), and reads them;
2. Python decides what comes next for each, as :mod:`autostep.runs` would:
   the next step's process and message, the end of the job, or its failure;
3. one statement writes it all: the processes succeeded, their fan-out
   parents' ``pending`` counted down, the jobs' step counts or ends, the new
   processes, and the outbox rows (each job's events and step messages, in
   ``seq`` order).

Both statements are prepared on the server and have a fixed shape whatever
the number of completions (their rows travel as JSON arrays). No ORM object
is built, so a group of steps costs two round trips and little CPU besides
its commit. Everything else stays with :mod:`autostep.runs`: what this
module does not cover (entering a fan-out, the last child of a fan-out, a
job already finished, a job with a second completion in the batch that is
not a fan-out sibling) it leaves, untouched or half-done in the same
transaction, to the ORM path, which locks again (it holds the locks
already) and carries on where this left off.
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
from autostep.db import driver
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
    "Completion",
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
#: Lock the jobs of the processes ``%(ids)s``, then the processes, each in id
#: order: rows are locked as the sorted rows come out, and every job's row
#: before any process's (the outer sort reads the whole materialized CTE).
_LOCK = """
WITH j AS MATERIALIZED (
    SELECT id, workflow_id, version_id, status, trigger, rerun_of, steps, output, error,
           version, finished_at, input, created_at
    FROM job WHERE id IN (SELECT job_id FROM process WHERE id = ANY(%(ids)s))
    ORDER BY id
    FOR UPDATE)
SELECT j.*, p.id, p.job_id, p.parent_id, p.kind, p.step, p.function, p.item_index,
       p.status, p.attempt, p.error, p.output, p.reused_from, p.version, p.started_at,
       p.finished_at
FROM j JOIN process AS p ON p.job_id = j.id AND p.id = ANY(%(ids)s)
ORDER BY p.job_id, p.id
FOR UPDATE OF p
"""
#: The rows to update come as JSON arrays, whose size PostgreSQL cannot know
#: (it assumes 100 rows): each update also names its rows' ids as an array, so
#: that it reads them through the primary key, never by a scan of the table.
_WRITE = f"""
WITH done AS (
    UPDATE process AS p
    SET status = r.status, output = r.output, error = NULL, started_at = r.started_at,
        finished_at = r.finished_at, version = r.version
    FROM jsonb_to_recordset(%(done)s) AS r(
        id uuid, status text, output jsonb, started_at timestamptz, finished_at timestamptz,
        version int)
    WHERE p.id = r.id AND p.id = ANY(%(done_ids)s::uuid[])),
parent AS (
    UPDATE process AS p SET pending = p.pending - r.n
    FROM jsonb_to_recordset(%(parents)s) AS r(id uuid, n int)
    WHERE p.id = r.id AND p.id = ANY(%(parent_ids)s::uuid[])
    RETURNING p.id, p.pending),
job_changed AS (
    UPDATE job AS j
    SET steps = r.steps, status = r.status, output = r.output, error = r.error,
        finished_at = r.finished_at, version = r.version
    FROM jsonb_to_recordset(%(jobs)s) AS r(
        id uuid, steps int, status text, output jsonb, error text, finished_at timestamptz,
        version int)
    WHERE j.id = r.id AND j.id = ANY(%(job_ids)s::uuid[])),
{INSERT_BORN},
{INSERT_SENT}
SELECT id, pending FROM parent
"""


class Completion(NamedTuple):
    """``attempt`` of a process succeeded with ``output``; its function began at ``started_at``."""

    process_id: uuid.UUID
    attempt: int
    output: dict[str, Any]
    started_at: datetime | None = None


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
    completions: list[Completion],
    *,
    also_lock: list[uuid.UUID] | None = None,
) -> list[tuple[Completed, ProcessFields]]:
    """Complete each of ``completions`` in two statements, where it can.

    Returns, for each in order, what it did and the process as it was
    locked. ``also_lock`` names more processes whose jobs and rows are
    locked in the same statement, in the same order (a group's failures,
    recorded afterwards). Raises :class:`StaleAttempt` when an attempt was
    overtaken, :class:`NotFoundError` for a process the database never had;
    the caller rolls back.
    """
    ids = [c.process_id for c in completions] + list(also_lock or ())
    if not ids:
        return []
    connection = driver(session)
    with connection.cursor() as cursor:
        cursor.execute(_LOCK, {"ids": ids}, prepare=True)
        found = cursor.fetchall()
    locked = {row[13]: (JobFields(*row[:13]), ProcessFields(*row[13:])) for row in found}
    batch = _Batch(session)
    done: list[tuple[Completed, ProcessFields]] = []
    for item in completions:
        if item.process_id not in locked:
            raise NotFoundError(f"no process {item.process_id}")
        job, process = locked[item.process_id]
        if process.attempt != item.attempt or ProcessStatus(process.status).finished:
            raise StaleAttempt(f"attempt {item.attempt} of process {process.id} is stale")
        done.append((batch.add(job, process, item), process))
    emptied = batch.write(connection)
    for index, (what, process) in enumerate(done):
        last = what is Completed.DONE and batch.last_child.get(process.parent_id) == index
        if last and process.parent_id in emptied:
            done[index] = (Completed.JOIN_PARENT, process)
    return done


class _Batch:
    """The rows that one write statement changes and inserts, as completions add them."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.now = datetime.now(UTC)
        self.done: list[dict[str, Any]] = []
        self.parents: dict[uuid.UUID, int] = {}
        #: The index of the last completion that counts each parent down.
        self.last_child: dict[uuid.UUID | None, int] = {}
        self.jobs: dict[uuid.UUID, JobFields] = {}
        self.advanced: set[uuid.UUID] = set()
        self.born: list[dict[str, Any]] = []
        self.writers: dict[uuid.UUID, OutboxWriter] = {}
        self.added = 0

    def add(self, job: JobFields, process: ProcessFields, item: Completion) -> Completed:
        """Add the writes of one completion; NOT_HERE leaves it all to the ORM path."""
        index, self.added = self.added, self.added + 1
        if JobStatus(job.status).finished or job.id in self.advanced:
            return Completed.NOT_HERE
        version = load_version(self.session, job.version_id)
        following = None
        if process.parent_id is None:
            if job.id in self.jobs:
                return Completed.NOT_HERE  # a job's second completion here: one at a time
            following = _next(self.session, job, version, process.step, item.output)
            if following is None:
                return Completed.NOT_HERE
        finished = process._replace(
            status=ProcessStatus.SUCCEEDED,
            output=item.output,
            error=None,
            started_at=process.started_at or item.started_at or self.now,
            finished_at=self.now,
            version=process.version + 1,
        )
        out = self.writers.get(job.id)
        if out is None:
            out = self.writers[job.id] = OutboxWriter(self.session, job.id)
        out.event("process.updated", finished.id, process_event(finished))
        self.done.append(_done_row(finished))
        self.jobs.setdefault(job.id, job)
        if process.parent_id is not None:
            self.parents[process.parent_id] = self.parents.get(process.parent_id, 0) + 1
            self.last_child[process.parent_id] = index
        if following is not None:
            self.advanced.add(job.id)
            changed, born = _follow(
                self.session, out, job, version, following, item.output, self.now
            )
            self.jobs[job.id] = changed
            self.born += born
        return Completed.DONE

    def write(self, connection: psycopg.Connection[Any]) -> set[uuid.UUID]:
        """Run the write statement; the parents whose ``pending`` came down to 0."""
        if not self.done:
            return set()
        rows = [row for out in self.writers.values() for row in out.take()]
        jobs = [_job_row(job) for job in self.jobs.values() if job.id in self.advanced]
        params = {
            "done_ids": [row["id"] for row in self.done],
            "parent_ids": list(self.parents),
            "job_ids": [row["id"] for row in jobs],
            "done": Jsonb(self.done, dumps=compact_json),
            "parents": Jsonb(
                [{"id": str(p), "n": n} for p, n in self.parents.items()], dumps=compact_json
            ),
            "jobs": Jsonb(jobs, dumps=compact_json),
            "born": Jsonb(self.born, dumps=compact_json),
            "outbox": Jsonb(rows, dumps=compact_json),
        }
        with connection.cursor() as cursor:
            cursor.execute(_WRITE, params, prepare=True)
            return {parent for parent, pending in cursor.fetchall() if pending == 0}


def _done_row(process: ProcessFields) -> dict[str, Any]:
    return {
        "id": str(process.id),
        "status": str(process.status),
        "output": process.output,
        "started_at": process.started_at,
        "finished_at": process.finished_at,
        "version": process.version,
    }


def _job_row(job: JobFields) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "steps": job.steps,
        "status": str(job.status),
        "output": job.output,
        "error": job.error,
        "finished_at": job.finished_at,
        "version": job.version,
    }


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


def compact_json(value: Any) -> str:
    """JSON for the multi-row statements: compact, with timestamps in ISO 8601."""
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> str:
    """Timestamps (an outbox row's ``available_at``) as ISO 8601, which PostgreSQL reads."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
