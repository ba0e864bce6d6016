"""Firing triggers: the one way a trigger starts a run.

:func:`start_from_trigger` turns what a trigger received (a webhook's body,
a manual start's input, a cron tick's time) into a job's input through the
trigger's ``input_template`` and starts the job with
:func:`autostep.runs.start_job`, ``job.trigger_id`` set. Webhook and manual
starts honour an ``Idempotency-Key`` (:mod:`autostep.idempotency`).

Cron ticks go through :func:`fire_tick`, inside the caller's transaction;
``autostep fire`` calls it through :func:`fire_due` (the catch-up and the
ticks in one transaction), the local scheduler after :func:`plan_ticks`
and :func:`record_skipped` (each tick in a transaction of its own):

1. the trigger row is locked (lock order: **trigger → workflow → job →
   processes**), so the ticks of one trigger are handled one at a time;
2. a disabled or deleted trigger starts nothing;
3. the tick is inserted into ``trigger_tick``, whose key is (trigger,
   scheduled time): a tick that is there already starts nothing, so a
   doubled Kubernetes Job, a restarted pod or a retried fire starts one run;
4. a tick later than ``starting_deadline_seconds`` is recorded skipped;
5. the concurrency policy: ``forbid`` records the tick skipped while a run
   of this trigger is running, ``replace`` cancels those runs first,
   ``allow`` starts regardless;
6. the run starts, and the tick records its job.

The tick row, the job and its first outbox rows commit together.

Catch-up (:func:`plan_ticks`, the policy in one place): the ticks after the
last handled one (or after ``active_since``, never before) up to ``until``.
``skip`` fires only the newest, and only when it is at most
:data:`SKIP_GRACE` old; ``latest`` fires the newest; ``all`` fires every
missed tick, oldest first, at most ``catch_up_limit`` (the newest). The
ticks not fired are recorded skipped with the reason (at most
:data:`MAX_RECORDED_SKIPS`, the newest: a downtime of a month of a
per-minute schedule leaves no 40,000 rows).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from autostep import idempotency, runs
from autostep.catalog import lock_active_workflow
from autostep.conditions import evaluate
from autostep.events import JobFields
from autostep.exceptions import (
    ConflictError,
    InvalidInput,
    NotFoundError,
    PermanentError,
)
from autostep.models import Job, JobStatus, TickOutcome, Trigger, TriggerTick
from autostep.trigger_kinds import CronConfig, fire_times_before
from autostep.triggers import get_trigger

__all__ = [
    "MAX_RECORDED_SKIPS",
    "SKIP_GRACE",
    "STILL_RUNNING",
    "FireOutcome",
    "Started",
    "TickPlan",
    "TickResult",
    "cron_config",
    "due_ticks",
    "fire_due",
    "fire_tick",
    "last_tick",
    "late_reason",
    "plan_ticks",
    "record_skipped",
    "start_from_trigger",
    "start_manual",
    "start_run",
    "tick_input",
    "tick_variables",
]

#: With ``catch_up: skip``, a tick this old or newer still fires.
SKIP_GRACE = timedelta(seconds=60)
#: Missed ticks recorded as skipped per fire, the newest.
MAX_RECORDED_SKIPS = 100

STILL_RUNNING = "a run of this trigger is still running"
BEYOND_LIMIT = "beyond the catch-up limit"


class FireOutcome(enum.StrEnum):
    #: The tick started a job.
    STARTED = "started"
    #: The tick was recorded as skipped; ``reason`` says why.
    SKIPPED = "skipped"
    #: The tick had been handled before (by another pod, an earlier attempt).
    ALREADY_FIRED = "already_fired"
    #: No tick was due (before the trigger became active, or none since the last).
    NOTHING_DUE = "nothing_due"
    #: The trigger is disabled: nothing happened.
    DISABLED = "disabled"
    #: The trigger does not exist (any more): nothing happened.
    DELETED = "deleted"


@dataclass(frozen=True)
class TickResult:
    """What one fire did for a trigger (and tick, when there was one)."""

    trigger_id: uuid.UUID | str
    outcome: FireOutcome
    scheduled_at: datetime | None = None
    job_id: uuid.UUID | None = None
    reason: str | None = None

    def describe(self) -> str:
        """One line for a log."""
        tick = f" tick {self.scheduled_at.isoformat()}" if self.scheduled_at else ""
        what = f"trigger {self.trigger_id}{tick}: {self.outcome.replace('_', ' ')}"
        if self.job_id:
            what += f", job {self.job_id}"
        return f"{what} ({self.reason})" if self.reason else what


class Started(NamedTuple):
    """The job a trigger started, or the one its ``Idempotency-Key`` started before."""

    job: Job | JobFields
    #: The key was seen before: this is its earlier job, and none was started now.
    replayed: bool


@dataclass(frozen=True)
class TickPlan:
    """The ticks to fire, oldest first, and those to record as skipped, with why."""

    fire: list[datetime] = field(default_factory=list)
    skip: list[tuple[datetime, str]] = field(default_factory=list)


def plan_ticks(
    config: CronConfig, last_tick: datetime | None, since: datetime, now: datetime
) -> TickPlan:
    """The catch-up policy: which ticks in (max(last_tick, since), now] fire, which are skipped."""
    start = max(last_tick, since) if last_tick is not None else since
    limit = config.catch_up_limit if config.catch_up == "all" else 1
    missed = fire_times_before(config, now, after=start, count=limit + MAX_RECORDED_SKIPS)
    if not missed:
        return TickPlan()
    if config.catch_up == "all":
        fire, reason = missed[-limit:], BEYOND_LIMIT
    elif config.catch_up == "latest":
        fire, reason = missed[-1:], "catch-up policy latest: a newer tick fired"
    else:
        fresh = now - missed[-1] <= SKIP_GRACE
        fire, reason = (missed[-1:] if fresh else []), "catch-up policy skip"
    skip = [(tick, reason) for tick in missed if tick not in fire]
    return TickPlan(fire=fire, skip=skip)


def due_ticks(
    config: CronConfig, last_tick: datetime | None, since: datetime, now: datetime
) -> list[datetime]:
    """The ticks to fire now, oldest first (:func:`plan_ticks` without the skipped ones)."""
    return plan_ticks(config, last_tick, since, now).fire


def fire_due(
    session: Session, trigger_id: uuid.UUID | str, *, until: datetime, now: datetime
) -> list[TickResult]:
    """Fire what the catch-up policy says is due up to ``until`` (a tick, or now).

    Records the missed ticks it does not fire as skipped. ``now`` is the
    time the starting deadline is measured against.
    """
    trigger = _lock(session, trigger_id)
    if isinstance(trigger, TickResult):
        return [trigger]
    config = cron_config(trigger)
    last = last_tick(session, trigger.id)
    plan = plan_ticks(config, last, trigger.active_since, until)
    record_skipped(session, trigger.id, plan.skip)
    results = [fire_tick(session, trigger.id, tick, now=now) for tick in plan.fire]
    if results:
        return results
    if last is not None and last >= until:
        return [TickResult(trigger.id, FireOutcome.ALREADY_FIRED, scheduled_at=until)]
    reason = "no tick due" if not plan.skip else f"{len(plan.skip)} missed tick(s) skipped"
    return [TickResult(trigger.id, FireOutcome.NOTHING_DUE, reason=reason)]


def last_tick(session: Session, trigger_id: uuid.UUID) -> datetime | None:
    """The newest tick of the trigger that is recorded (fired or skipped), or None."""
    return session.scalar(
        select(func.max(TriggerTick.scheduled_at)).where(TriggerTick.trigger_id == trigger_id)
    )


def record_skipped(
    session: Session, trigger_id: uuid.UUID, skipped: list[tuple[datetime, str]]
) -> None:
    """Record the ticks a :class:`TickPlan` skips, with their reasons (those already there stay)."""
    if skipped:
        _record(session, trigger_id, skipped)


def fire_tick(
    session: Session, trigger_id: uuid.UUID | str, scheduled_at: datetime, *, now: datetime
) -> TickResult:
    """Handle one tick of a cron trigger, once: start a run or record why not."""
    trigger = _lock(session, trigger_id)
    if isinstance(trigger, TickResult):
        return trigger
    config = cron_config(trigger)
    scheduled_at = scheduled_at.astimezone(UTC)
    claimed = session.execute(
        insert(TriggerTick)
        .values(trigger_id=trigger.id, scheduled_at=scheduled_at, outcome=TickOutcome.SKIPPED)
        .on_conflict_do_nothing()
        .returning(TriggerTick.trigger_id)
    ).first()
    if claimed is None:
        return TickResult(trigger.id, FireOutcome.ALREADY_FIRED, scheduled_at=scheduled_at)
    reason = _why_not(session, trigger, config, scheduled_at, now)
    job_id = None
    if reason is None:
        try:
            with session.begin_nested():
                if config.concurrency == "replace":
                    for running in _running_jobs(session, trigger.id):
                        runs.cancel_job(session, running)
                variables = tick_variables(trigger, scheduled_at)
                job_id = start_from_trigger(session, trigger.id, variables).id
        except (InvalidInput, PermanentError, ConflictError, NotFoundError) as exc:
            reason = f"could not start: {exc}"
    outcome = TickOutcome.STARTED if job_id is not None else TickOutcome.SKIPPED
    session.execute(
        update(TriggerTick)
        .where(TriggerTick.trigger_id == trigger.id, TriggerTick.scheduled_at == scheduled_at)
        .values(outcome=outcome, reason=reason, job_id=job_id)
    )
    return TickResult(
        trigger.id, FireOutcome(outcome), scheduled_at=scheduled_at, job_id=job_id, reason=reason
    )


def start_from_trigger(
    session: Session,
    trigger_id: uuid.UUID | str,
    variables: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    scheduled_at: datetime | None = None,
) -> Job | JobFields:
    """Start a run of the trigger's workflow: :func:`start_run`'s job."""
    del scheduled_at  # the tick row, written by fire_tick, records it
    return start_run(session, trigger_id, variables, idempotency_key=idempotency_key).job


def start_run(
    session: Session,
    trigger_id: uuid.UUID | str,
    variables: dict[str, Any],
    *,
    idempotency_key: str | None = None,
) -> Started:
    """Start a run of the trigger's workflow with the input its template makes of ``variables``.

    ``variables`` are what the kind provides (cron: ``scheduled_time``,
    ``trigger``; webhook: ``body``, ``headers``; manual: ``input``; the
    trigger fills in ``trigger`` and, for manual, ``preset``). Without a
    template the input is the natural payload: ``{}`` for cron, the body for
    a webhook, the preset updated with ``input`` for manual.
    :class:`ConflictError` for a disabled trigger or an archived workflow;
    :class:`InvalidInput` naming ``input_template`` when the template fails,
    ``Idempotency-Key`` when the key came with other variables. A webhook's
    ``headers`` are left out of that comparison: they differ between
    deliveries of one request (dates, tracing ids), the body does not.
    """
    trigger = get_trigger(session, trigger_id)
    if not trigger.enabled:
        raise ConflictError(f"trigger {trigger.name!r} is disabled")
    variables = {**variables, "trigger": {"id": str(trigger.id), "name": trigger.name}}
    if trigger.kind == "manual":
        variables.setdefault("input", {})
        variables["preset"] = trigger.config.get("input", {})
    if idempotency_key is not None:
        compared = {name: value for name, value in variables.items() if name != "headers"}
        request = idempotency.fingerprint({"trigger": str(trigger.id), "variables": compared})
        earlier = idempotency.claim(session, trigger.workflow_id, idempotency_key, request)
        if earlier is not None:
            replayed = session.get(Job, earlier)
            if replayed is None:
                raise NotFoundError(f"no job {earlier}")
            return Started(replayed, replayed=True)
    job = runs.start_job(
        session,
        trigger.project_id,
        str(trigger.workflow_id),
        _input(trigger, variables),
        trigger=trigger.kind,
        trigger_id=trigger.id,
    )
    if idempotency_key is not None:
        idempotency.record(session, trigger.workflow_id, idempotency_key, job.id)
    return Started(job, replayed=False)


def start_manual(
    session: Session,
    trigger_id: uuid.UUID | str,
    input: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
) -> Started:
    """Start a run from a manual trigger: its preset updated with ``input``.

    :class:`ConflictError` for a trigger of another kind (they start on
    their own: a schedule, a call of the webhook).
    """
    trigger = get_trigger(session, trigger_id)
    if trigger.kind != "manual":
        raise ConflictError(
            f"trigger {trigger.name!r} is a {trigger.kind} trigger; only manual ones start by hand"
        )
    return start_run(session, trigger.id, {"input": input or {}}, idempotency_key=idempotency_key)


def tick_variables(trigger: Trigger, scheduled_at: datetime) -> dict[str, Any]:
    """What a cron trigger's ``input_template`` sees for the tick ``scheduled_at``."""
    return {
        "scheduled_time": scheduled_at.isoformat().replace("+00:00", "Z"),
        "trigger": {"id": str(trigger.id), "name": trigger.name},
    }


def tick_input(trigger: Trigger, scheduled_at: datetime) -> Any:
    """The input of the run a tick starts; :class:`InvalidInput` when the template fails."""
    return _input(trigger, tick_variables(trigger, scheduled_at))


def late_reason(config: CronConfig, scheduled_at: datetime, now: datetime) -> str | None:
    """Why a tick handled at ``now`` is too late to start (its starting deadline), or None."""
    deadline = config.starting_deadline_seconds
    late = (now - scheduled_at).total_seconds()
    if deadline is not None and late > deadline:
        return f"missed its starting deadline by {late - deadline:.0f} s"
    return None


def cron_config(trigger: Trigger) -> CronConfig:
    """The trigger's cron settings; :class:`ConflictError` for a trigger of another kind."""
    if trigger.kind != "cron":
        raise ConflictError(
            f"trigger {trigger.name!r} is a {trigger.kind} trigger: it has no ticks"
        )
    return CronConfig.model_validate(trigger.config)


def _input(trigger: Trigger, variables: dict[str, Any]) -> Any:
    if trigger.input_template is not None:
        try:
            return evaluate(trigger.input_template, variables, field="input_template")
        except PermanentError as exc:
            reason = str(exc).removeprefix("input_template: ")
            raise InvalidInput(reason, field="input_template") from None
    if trigger.kind == "webhook":
        return variables.get("body")
    if trigger.kind == "manual":
        return {**variables["preset"], **variables["input"]}
    return {}


def _lock(session: Session, trigger_id: uuid.UUID | str) -> Trigger | TickResult:
    """The trigger, locked; or the result saying it is gone or disabled."""
    try:
        trigger = get_trigger(session, trigger_id, lock=True)
    except NotFoundError:
        return TickResult(trigger_id, FireOutcome.DELETED, reason="no such trigger")
    if not trigger.enabled:
        return TickResult(trigger.id, FireOutcome.DISABLED, reason="the trigger is disabled")
    return trigger


def _why_not(
    session: Session, trigger: Trigger, config: CronConfig, scheduled_at: datetime, now: datetime
) -> str | None:
    """Why this tick starts no run (deadline, archived workflow, forbid), or None."""
    late = late_reason(config, scheduled_at, now)
    if late is not None:
        return late
    try:
        lock_active_workflow(session, trigger.workflow_id)
    except (ConflictError, NotFoundError) as exc:
        return str(exc)
    if config.concurrency == "forbid" and _running_jobs(session, trigger.id):
        return STILL_RUNNING
    return None


def _running_jobs(session: Session, trigger_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.trigger_id == trigger_id, Job.status == JobStatus.RUNNING)
            .order_by(Job.created_at)
        )
    )


def _record(session: Session, trigger_id: uuid.UUID, skipped: list[tuple[datetime, str]]) -> None:
    session.execute(
        insert(TriggerTick)
        .values(
            [
                {
                    "trigger_id": trigger_id,
                    "scheduled_at": tick,
                    "outcome": TickOutcome.SKIPPED,
                    "reason": reason,
                }
                for tick, reason in skipped
            ]
        )
        .on_conflict_do_nothing()
    )
