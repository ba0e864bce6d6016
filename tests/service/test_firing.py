"""Firing cron ticks against the real database: once per tick, policies, deadlines, catch-up.

No function runs here: jobs stay running, which is what the concurrency
policies look at. Time is injected (``now``, ``until``) and the trigger's
``active_since`` is moved back to simulate a downtime.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import eventlet
import pytest
from sqlalchemy import func, select, update

from autostep import firing, triggers
from autostep.db import unit_of_work
from autostep.exceptions import ConflictError
from autostep.firing import FireOutcome
from autostep.models import Job, JobStatus, Trigger, TriggerTick
from tests.helpers import publish, waiting_on_a_lock

DEFINITION = {"name": "w", "steps": [{"name": "a", "function": "t_noop"}]}
#: A tick of the schedules below, on the hour.
TICK = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def make_trigger(session_factory: Any, project: str) -> Any:
    publish(session_factory, project, DEFINITION)

    def make(**config: Any) -> uuid.UUID:
        config.setdefault("schedule", "*/10 * * * *")
        with unit_of_work(session_factory) as session:
            trigger = triggers.create_trigger(
                session,
                project,
                "w",
                f"t-{uuid.uuid4().hex[:6]}",
                "cron",
                config,
                input_template='{"at": scheduled_time, "by": trigger.name}',
            ).trigger
            # active since long before the ticks used here
            trigger.active_since = TICK - timedelta(days=1)
            return trigger.id

    return make


def fire(session_factory: Any, trigger_id: uuid.UUID, tick: datetime = TICK, **kw: Any) -> Any:
    with unit_of_work(session_factory) as session:
        return firing.fire_tick(session, trigger_id, tick, now=kw.get("now", tick))


def jobs(session_factory: Any, trigger_id: uuid.UUID) -> list[Job]:
    with unit_of_work(session_factory) as session:
        query = select(Job).where(Job.trigger_id == trigger_id).order_by(Job.created_at)
        return list(session.scalars(query))


def ticks(session_factory: Any, trigger_id: uuid.UUID) -> list[tuple[datetime, str, str | None]]:
    with unit_of_work(session_factory) as session:
        rows = session.scalars(
            select(TriggerTick)
            .where(TriggerTick.trigger_id == trigger_id)
            .order_by(TriggerTick.scheduled_at)
        )
        return [(row.scheduled_at, row.outcome, row.reason) for row in rows]


def test_a_tick_starts_one_job_with_the_templated_input(
    session_factory: Any, make_trigger: Any
) -> None:
    trigger_id = make_trigger()
    first = fire(session_factory, trigger_id)
    again = fire(session_factory, trigger_id)
    assert first.outcome is FireOutcome.STARTED and first.job_id is not None
    assert again.outcome is FireOutcome.ALREADY_FIRED
    (job,) = jobs(session_factory, trigger_id)
    assert job.id == first.job_id and job.trigger == "cron"
    assert job.input["at"] == "2026-06-01T12:00:00Z" and job.input["by"].startswith("t-")
    assert ticks(session_factory, trigger_id) == [(TICK, "started", None)]


def test_one_tick_fired_from_two_connections_at_once_starts_one_job(
    session_factory: Any, database_url: str, make_trigger: Any
) -> None:
    trigger_id = make_trigger()
    with unit_of_work(session_factory) as first:
        assert firing.fire_tick(first, trigger_id, TICK, now=TICK).outcome is FireOutcome.STARTED
        second = eventlet.spawn(fire, session_factory, trigger_id)
        while not second.dead and not waiting_on_a_lock(database_url):
            eventlet.sleep(0.02)
    assert second.wait().outcome is FireOutcome.ALREADY_FIRED
    assert len(jobs(session_factory, trigger_id)) == 1


def test_forbid_skips_a_tick_while_a_run_of_the_trigger_runs(
    session_factory: Any, make_trigger: Any
) -> None:
    trigger_id = make_trigger(concurrency="forbid")
    assert fire(session_factory, trigger_id).outcome is FireOutcome.STARTED
    later = fire(session_factory, trigger_id, TICK + timedelta(minutes=10))
    assert later.outcome is FireOutcome.SKIPPED
    assert later.reason == "a run of this trigger is still running"
    assert len(jobs(session_factory, trigger_id)) == 1


def test_forbid_holds_when_two_ticks_fire_at_once(
    session_factory: Any, database_url: str, make_trigger: Any
) -> None:
    trigger_id = make_trigger(concurrency="forbid")
    with unit_of_work(session_factory) as first:
        assert firing.fire_tick(first, trigger_id, TICK, now=TICK).outcome is FireOutcome.STARTED
        second = eventlet.spawn(fire, session_factory, trigger_id, TICK + timedelta(minutes=10))
        # the second waits for the first's trigger lock; without it, it would not see the job
        while not second.dead and not waiting_on_a_lock(database_url):
            eventlet.sleep(0.02)
    assert second.wait().outcome is FireOutcome.SKIPPED
    assert len(jobs(session_factory, trigger_id)) == 1


def test_replace_cancels_the_running_job_then_starts(
    session_factory: Any, make_trigger: Any
) -> None:
    trigger_id = make_trigger(concurrency="replace")
    first = fire(session_factory, trigger_id)
    second = fire(session_factory, trigger_id, TICK + timedelta(minutes=10))
    assert second.outcome is FireOutcome.STARTED
    statuses = {job.id: job.status for job in jobs(session_factory, trigger_id)}
    assert statuses == {first.job_id: JobStatus.CANCELLED, second.job_id: JobStatus.RUNNING}


def test_allow_starts_beside_a_running_job(session_factory: Any, make_trigger: Any) -> None:
    trigger_id = make_trigger()
    fire(session_factory, trigger_id)
    fire(session_factory, trigger_id, TICK + timedelta(minutes=10))
    assert [job.status for job in jobs(session_factory, trigger_id)] == ["running", "running"]


def test_a_tick_past_its_starting_deadline_is_skipped(
    session_factory: Any, make_trigger: Any
) -> None:
    trigger_id = make_trigger(starting_deadline_seconds=60)
    on_time = fire(session_factory, trigger_id, now=TICK + timedelta(seconds=60))
    late_tick = TICK + timedelta(minutes=10)
    late = fire(session_factory, trigger_id, late_tick, now=late_tick + timedelta(seconds=372))
    assert on_time.outcome is FireOutcome.STARTED
    assert late.outcome is FireOutcome.SKIPPED
    assert late.reason == "missed its starting deadline by 312 s"
    assert len(jobs(session_factory, trigger_id)) == 1


@pytest.mark.parametrize(
    ("policy", "now_after_last", "started", "skipped_reason"),
    [
        ("latest", timedelta(minutes=5), [60], "catch-up policy latest: a newer tick fired"),
        ("all", timedelta(minutes=5), [40, 50, 60], "beyond the catch-up limit"),
        ("skip", timedelta(minutes=5), [], "catch-up policy skip"),
        ("skip", timedelta(seconds=30), [60], "catch-up policy skip"),
    ],
)  # fmt: skip
def test_catch_up_after_a_downtime(
    session_factory: Any,
    make_trigger: Any,
    policy: str,
    now_after_last: timedelta,
    started: list[int],
    skipped_reason: str,
) -> None:
    """Down from 12:00 (the last tick handled) to 13:0x: six ticks missed, 12:10 to 13:00."""
    trigger_id = make_trigger(catch_up=policy, catch_up_limit=3)
    fire(session_factory, trigger_id)
    now = TICK + timedelta(hours=1) + now_after_last
    with unit_of_work(session_factory) as session:
        results = firing.fire_due(session, trigger_id, until=now, now=now)
    missed = [TICK + timedelta(minutes=m) for m in (10, 20, 30, 40, 50, 60)]
    fired = [TICK + timedelta(minutes=m) for m in started]
    assert [r.scheduled_at for r in results if r.outcome is FireOutcome.STARTED] == fired
    recorded = ticks(session_factory, trigger_id)[1:]
    assert [t for t, _, _ in recorded] == missed
    assert [(t, reason) for t, outcome, reason in recorded if outcome == "skipped"] == [
        (t, skipped_reason) for t in missed if t not in fired
    ]
    assert len(jobs(session_factory, trigger_id)) == 1 + len(started)
    with unit_of_work(session_factory) as session:
        again = firing.fire_due(session, trigger_id, until=now, now=now)
    assert [r.outcome for r in again] in ([FireOutcome.ALREADY_FIRED], [FireOutcome.NOTHING_DUE])
    assert len(jobs(session_factory, trigger_id)) == 1 + len(started)


def test_ticks_before_the_trigger_became_active_are_never_caught_up(
    session_factory: Any, make_trigger: Any
) -> None:
    trigger_id = make_trigger(catch_up="all")
    with unit_of_work(session_factory) as session:
        session.execute(update(Trigger).where(Trigger.id == trigger_id).values(active_since=TICK))
    now = TICK + timedelta(minutes=25)
    with unit_of_work(session_factory) as session:
        results = firing.fire_due(session, trigger_id, until=now, now=now)
    assert [r.scheduled_at for r in results] == [TICK + timedelta(minutes=m) for m in (10, 20)]


def test_a_disabled_or_deleted_trigger_starts_nothing(
    session_factory: Any, make_trigger: Any
) -> None:
    disabled, deleted = make_trigger(), make_trigger()
    with unit_of_work(session_factory) as session:
        triggers.update_trigger(session, disabled, enabled=False)
        triggers.delete_trigger(session, deleted)
    assert fire(session_factory, disabled).outcome is FireOutcome.DISABLED
    assert fire(session_factory, deleted).outcome is FireOutcome.DELETED
    with unit_of_work(session_factory) as session:
        due = firing.fire_due(session, disabled, until=TICK, now=TICK)
    assert [r.outcome for r in due] == [FireOutcome.DISABLED]
    with unit_of_work(session_factory) as session:
        count = session.scalar(
            select(func.count()).select_from(Job).where(Job.trigger_id.in_([disabled, deleted]))
        )
    assert count == 0 and ticks(session_factory, disabled) == []


def test_a_failing_template_records_the_tick_skipped_with_why(
    session_factory: Any, make_trigger: Any
) -> None:
    trigger_id = make_trigger()
    with unit_of_work(session_factory) as session:
        triggers.update_trigger(session, trigger_id, input_template="[scheduled_time]")
    result = fire(session_factory, trigger_id)
    assert result.outcome is FireOutcome.SKIPPED and "input" in str(result.reason)
    assert jobs(session_factory, trigger_id) == []


def test_manual_and_webhook_starts_share_idempotency_keys(
    session_factory: Any, project: str
) -> None:
    publish(session_factory, project, DEFINITION)
    with unit_of_work(session_factory) as session:
        manual = triggers.create_trigger(
            session, project, "w", "button", "manual", {"input": {"a": 1, "b": 2}}
        ).trigger.id
        hook = triggers.create_trigger(session, project, "w", "hook", "webhook").trigger.id
    with unit_of_work(session_factory) as session:
        started = firing.start_from_trigger(session, manual, {"input": {"b": 3}})
        job = session.get(Job, started.id)
        assert job is not None
        assert (job.input, job.trigger, job.trigger_id) == ({"a": 1, "b": 3}, "manual", manual)
        first = firing.start_from_trigger(session, hook, {"body": {"x": 1}}, idempotency_key="k")
        same = firing.start_from_trigger(session, hook, {"body": {"x": 1}}, idempotency_key="k")
        assert first.id == same.id and first.input == {"x": 1}
    with pytest.raises(Exception, match="Idempotency-Key"), unit_of_work(session_factory) as s:
        firing.start_from_trigger(s, hook, {"body": {"x": 2}}, idempotency_key="k")
    with unit_of_work(session_factory) as session:
        triggers.update_trigger(session, hook, enabled=False)
    with pytest.raises(ConflictError, match="disabled"), unit_of_work(session_factory) as s:
        firing.start_from_trigger(s, hook, {"body": {}})
