"""Firing the cron ticks of many triggers at once, in a handful of statements.

The local scheduler hands :func:`fire_ticks` the ticks due in one pass (up
to a few hundred, of as many triggers); each tick is handled exactly as
:func:`autostep.firing.fire_tick` handles it, with the same outcomes and
reasons, inside the caller's transaction:

1. one statement locks the triggers, in id order (lock order: **trigger →
   workflow → job → processes**); a deleted or disabled one starts nothing;
2. one statement inserts the ticks (``ON CONFLICT DO NOTHING RETURNING``):
   a tick that is there already starts nothing;
3. a tick later than its starting deadline is skipped; the workflows of
   the others are share-locked, in id order (an archived one starts
   nothing); one query finds which ``forbid`` triggers have a run running;
4. Python builds each run from the trigger's template, as every run is
   built (:class:`autostep.starts.NewRuns`): the job, its first process,
   the step message and the events;
5. one statement writes the jobs, processes and outbox rows and records
   each tick's outcome and job.

Ticks of ``replace`` triggers (they cancel runs first), of a workflow whose
start step fans out, and of triggers of another kind, go through
:func:`~autostep.firing.fire_tick` in the same transaction, so there is one
behaviour. The ticks of one trigger are handled oldest first; under
``forbid`` the run an earlier tick of the batch started counts as running.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from autostep.catalog import CompiledVersion, latest_version, load_version, lock_active_workflow
from autostep.completion import INSERT_BORN, INSERT_SENT, compact_json
from autostep.db import driver
from autostep.exceptions import ConflictError, InvalidInput, NotFoundError, PermanentError
from autostep.firing import (
    STILL_RUNNING,
    FireOutcome,
    TickResult,
    cron_config,
    fire_tick,
    late_reason,
    tick_input,
)
from autostep.models import Job, JobStatus, TickOutcome, Trigger, TriggerTick
from autostep.starts import INSERT_JOBS, NewRuns, fans_out
from autostep.trigger_kinds import CronConfig
from autostep.validation import JobInput, check

__all__ = ["fire_ticks"]

#: The jobs, their first processes, their outbox rows (in ``seq`` order) and the ticks' outcomes.
_WRITE = f"""
WITH {INSERT_JOBS},
{INSERT_BORN},
{INSERT_SENT},
recorded AS (
    UPDATE trigger_tick AS t SET outcome = r.outcome, reason = r.reason, job_id = r.job_id
    FROM jsonb_to_recordset(%(ticks)s) AS r(
        trigger_id uuid, scheduled_at timestamptz, outcome text, reason text, job_id uuid)
    WHERE t.trigger_id = r.trigger_id AND t.scheduled_at = r.scheduled_at
      AND t.trigger_id = ANY(%(tick_triggers)s::uuid[]))
SELECT 1
"""


@dataclass
class _Batch:
    """What the batch writes, collected tick by tick: the runs, and each tick's outcome."""

    runs: NewRuns
    ticks: list[dict[str, Any]] = field(default_factory=list)


def fire_ticks(
    session: Session, ticks: Sequence[tuple[uuid.UUID, datetime]], *, now: datetime
) -> list[TickResult]:
    """Handle each (trigger, scheduled time) once, as :func:`fire_tick` would; results in order.

    A trigger's ticks must come oldest first. ``now`` is the time the
    starting deadlines are measured against.
    """
    wanted = [(trigger_id, at.astimezone(UTC)) for trigger_id, at in ticks]
    locked = _lock_triggers(session, {trigger_id for trigger_id, _ in wanted})
    versions = _start_versions(session, locked.values())
    results: dict[int, TickResult] = {}
    fast: list[tuple[int, Trigger, CronConfig, datetime]] = []
    for n, (trigger_id, at) in enumerate(wanted):
        trigger = locked.get(trigger_id)
        if trigger is None:
            results[n] = TickResult(trigger_id, FireOutcome.DELETED, reason="no such trigger")
        elif not trigger.enabled:
            disabled = "the trigger is disabled"
            results[n] = TickResult(trigger.id, FireOutcome.DISABLED, reason=disabled)
        elif _needs_one_by_one(trigger, versions.get(trigger.workflow_id)):
            results[n] = fire_tick(session, trigger.id, at, now=now)
        else:
            fast.append((n, trigger, cron_config(trigger), at))
    claimed = _claim(session, [(trigger.id, at) for _, trigger, _, at in fast])
    batch = _Batch(NewRuns(session))
    on_time = []
    for n, trigger, config, at in fast:
        if (trigger.id, at) not in claimed:
            results[n] = TickResult(trigger.id, FireOutcome.ALREADY_FIRED, scheduled_at=at)
        elif (late := late_reason(config, at, now)) is not None:
            results[n] = _record(batch, trigger, at, None, late)
        else:
            on_time.append((n, trigger, config, at))
    refused = _lock_workflows(session, {trigger.workflow_id for _, trigger, _, _ in on_time})
    running = _running(
        session, {trigger.id for _, trigger, config, _ in on_time if config.concurrency == "forbid"}
    )
    for n, trigger, config, at in on_time:
        reason: str | None = refused.get(trigger.workflow_id)
        if reason is None and config.concurrency == "forbid" and trigger.id in running:
            reason = STILL_RUNNING
        job_id = None
        if reason is None:
            version = versions[trigger.workflow_id]
            assert version is not None
            try:
                job_id = _start(session, batch, trigger, version, at)
            except (InvalidInput, PermanentError) as exc:
                reason = f"could not start: {exc}"
            else:
                running.add(trigger.id)
        results[n] = _record(batch, trigger, at, job_id, reason)
    _write(session, batch)
    return [results[n] for n in range(len(wanted))]


def _lock_triggers(session: Session, ids: set[uuid.UUID]) -> dict[uuid.UUID, Trigger]:
    """The triggers that still exist, locked for update in id order."""
    found = session.scalars(
        select(Trigger)
        .where(Trigger.id.in_(ids))
        .order_by(Trigger.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {trigger.id: trigger for trigger in found}


def _start_versions(session: Session, triggers: Any) -> dict[uuid.UUID, CompiledVersion | None]:
    """Each workflow's latest version, compiled (cached); None for a workflow without one."""
    versions: dict[uuid.UUID, CompiledVersion | None] = {}
    for workflow_id in sorted({trigger.workflow_id for trigger in triggers}):
        try:
            versions[workflow_id] = load_version(session, latest_version(session, workflow_id).id)
        except NotFoundError:
            versions[workflow_id] = None
    return versions


def _needs_one_by_one(trigger: Trigger, version: CompiledVersion | None) -> bool:
    """Whether the tick takes :func:`fire_tick`'s path: what this module does not cover."""
    if trigger.kind != "cron" or version is None:
        return True
    if trigger.config.get("concurrency") == "replace":
        return True
    return fans_out(version)


def _claim(
    session: Session, ticks: list[tuple[uuid.UUID, datetime]]
) -> set[tuple[uuid.UUID, datetime]]:
    """Insert the ticks (skipped until a run starts); those that were not there yet."""
    if not ticks:
        return set()
    rows = [
        {"trigger_id": trigger_id, "scheduled_at": at, "outcome": TickOutcome.SKIPPED}
        for trigger_id, at in ticks
    ]
    claimed = session.execute(
        insert(TriggerTick)
        .values(rows)
        .on_conflict_do_nothing()
        .returning(TriggerTick.trigger_id, TriggerTick.scheduled_at)
    )
    return {(trigger_id, at.astimezone(UTC)) for trigger_id, at in claimed}


def _lock_workflows(session: Session, ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Share-lock the workflows in id order; why each refused one starts no run."""
    refused = {}
    for workflow_id in sorted(ids):
        try:
            lock_active_workflow(session, workflow_id)
        except (ConflictError, NotFoundError) as exc:
            refused[workflow_id] = str(exc)
    return refused


def _running(session: Session, trigger_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Which of the triggers have a run running: one query."""
    if not trigger_ids:
        return set()
    found = session.scalars(
        select(Job.trigger_id)
        .where(Job.trigger_id.in_(trigger_ids), Job.status == JobStatus.RUNNING)
        .distinct()
    )
    return {trigger_id for trigger_id in found if trigger_id is not None}


def _start(
    session: Session, batch: _Batch, trigger: Trigger, version: CompiledVersion, at: datetime
) -> uuid.UUID:
    """Build a run of the tick (job, first process, step message, events); nothing is written."""
    job_input = check(JobInput, tick_input(trigger, at), field="input")
    return batch.runs.add(version, trigger.kind, job_input, trigger_id=trigger.id).id


def _record(
    batch: _Batch, trigger: Trigger, at: datetime, job_id: uuid.UUID | None, reason: str | None
) -> TickResult:
    outcome = TickOutcome.STARTED if job_id is not None else TickOutcome.SKIPPED
    batch.ticks.append(
        {
            "trigger_id": str(trigger.id),
            "scheduled_at": at.isoformat(),
            "outcome": str(outcome),
            "reason": reason,
            "job_id": str(job_id) if job_id is not None else None,
        }
    )
    return TickResult(
        trigger.id, FireOutcome(outcome), scheduled_at=at, job_id=job_id, reason=reason
    )


def _write(session: Session, batch: _Batch) -> None:
    """The one statement that writes the batch's runs and the ticks' outcomes."""
    if not batch.ticks:
        return
    params = {
        **batch.runs.params(),
        "ticks": Jsonb(batch.ticks, dumps=compact_json),
        # PostgreSQL takes a JSON array for 100 rows: the ids keep it on the primary key
        "tick_triggers": [tick["trigger_id"] for tick in batch.ticks],
    }
    with driver(session).cursor() as cursor:
        cursor.execute(_WRITE, params, prepare=True)
