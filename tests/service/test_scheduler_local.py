"""The local scheduler against the real database, on an injected clock.

A :class:`ManualClock` stands still until the test moves it, and
:func:`drive` moves it the way the scheduler's loop would sleep (to the next
due time, or by a fixed step), so a day of ticks takes a second. No function
runs: jobs stay running, which no test here minds (concurrency ``allow``).

The scheduler follows every cron trigger of the database, so the
``scheduler`` fixture first disables those that earlier tests left behind.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from autostep import triggers
from autostep.db import unit_of_work
from autostep.firing import FireOutcome, TickResult
from autostep.models import Job, Trigger, TriggerTick
from autostep.scheduler.clock import ScaledClock
from autostep.scheduler.local import LocalScheduler
from autostep.trigger_kinds import CronConfig, next_fire_times
from tests.helpers import publish

DEFINITION = {"name": "w", "steps": [{"name": "a", "function": "t_noop"}]}
MINUTE = timedelta(minutes=1)


class ManualClock:
    """Time that moves only when the test sets ``current``."""

    def __init__(self, current: datetime) -> None:
        self.current = current

    def now(self) -> datetime:
        return self.current

    def sleep_until(self, when: datetime, stop: threading.Event, timeout: float) -> None:
        stop.wait(0.01)


class Recording(LocalScheduler):
    """A scheduler that keeps every result of its passes, with the clock's time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fired: list[tuple[datetime, TickResult]] = []

    def step(self) -> list[TickResult]:
        at = self.clock.now()
        results = super().step()
        self.fired.extend((at, result) for result in results)
        return results


@pytest.fixture
def make_trigger(session_factory: Any, project: str) -> Any:
    publish(session_factory, project, DEFINITION)

    def make(since: datetime | None = None, **config: Any) -> uuid.UUID:
        config.setdefault("catch_up", "all")
        with unit_of_work(session_factory) as session:
            trigger = triggers.create_trigger(
                session, project, "w", f"t-{uuid.uuid4().hex[:6]}", "cron", config
            ).trigger
            if since is not None:
                trigger.active_since = since
            return trigger.id

    return make


@pytest.fixture
def scheduler(session_factory: Any, database_url: str) -> Iterator[Any]:
    """Factory of schedulers on this database; they resign at teardown."""
    with unit_of_work(session_factory) as session:
        session.execute(update(Trigger).where(Trigger.kind == "cron").values(enabled=False))
    made: list[Recording] = []

    def make(clock: Any, **kwargs: Any) -> Recording:
        kwargs.setdefault("retry_seconds", 0.1)
        made.append(Recording(session_factory, database_url, clock, workers=1, **kwargs))
        return made[-1]

    yield make
    for each in made:
        each.resign()


def drive(
    scheduler: Recording, clock: ManualClock, until: datetime, every: timedelta | None = None
) -> None:
    """Step ``scheduler`` up to ``until``: at each due time, or every ``every``."""
    assert scheduler.try_lead()
    scheduler.step()
    while True:
        wake = clock.current + every if every is not None else scheduler.next_due() or until
        if wake > until:
            break
        clock.current = wake
        scheduler.step()


def ticks(session_factory: Any, trigger_id: uuid.UUID) -> list[tuple[datetime, str, str | None]]:
    with unit_of_work(session_factory) as session:
        rows = session.scalars(
            select(TriggerTick)
            .where(TriggerTick.trigger_id == trigger_id)
            .order_by(TriggerTick.scheduled_at)
        )
        return [(row.scheduled_at, row.outcome, row.reason) for row in rows]


def started(session_factory: Any, trigger_id: uuid.UUID) -> list[datetime]:
    return [at for at, outcome, _ in ticks(session_factory, trigger_id) if outcome == "started"]


def job_count(session_factory: Any, trigger_id: uuid.UUID) -> int:
    with unit_of_work(session_factory) as session:
        return len(session.scalars(select(Job.id).where(Job.trigger_id == trigger_id)).all())


def expected(config: dict[str, Any], start: datetime, end: datetime) -> list[datetime]:
    """The ticks in (start, end] as Kubernetes would fire them."""
    found = next_fire_times(CronConfig.model_validate(config), start, count=1000)
    return [tick for tick in found if tick <= end]


def in_zone(text_: str, zone: str) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text_).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


@pytest.mark.parametrize(
    "day",
    [pytest.param("2026-03-29", id="spring-forward"), pytest.param("2026-10-25", id="fall-back")],
)
def test_fires_on_schedule_across_a_dst_change(
    session_factory: Any, make_trigger: Any, scheduler: Any, day: str
) -> None:
    start = in_zone(f"{day}T00:00:00", "Europe/Berlin") - timedelta(hours=2)
    end = start + timedelta(hours=8)
    configs = [
        {"schedule": "30 2 * * *", "time_zone": "Europe/Berlin"},
        {"schedule": "*/20 1-3 * * *", "time_zone": "Europe/Berlin"},
        {"schedule": "0 * * * *", "time_zone": "Europe/Berlin"},
    ]
    ids = [make_trigger(since=start, **config) for config in configs]
    clock = ManualClock(start)
    sched = scheduler(clock)
    drive(sched, clock, end)

    for trigger_id, config in zip(ids, configs, strict=True):
        want = expected(config, start, end)
        assert started(session_factory, trigger_id) == want
        assert job_count(session_factory, trigger_id) == len(want)
    # Berlin's 02:30 does not exist in spring and happens twice in autumn
    twice = {"2026-03-29": 0, "2026-10-25": 2}[day]
    assert len(started(session_factory, ids[0])) == twice
    # every tick fired at its time, not later
    assert all(at == result.scheduled_at for at, result in sched.fired if result.scheduled_at)


@pytest.mark.parametrize(
    ("policy", "fired_in_downtime"),
    [("skip", []), ("latest", [40]), ("all", [30, 35, 40])],
)
def test_catch_up_after_a_downtime(
    session_factory: Any,
    make_trigger: Any,
    scheduler: Any,
    policy: str,
    fired_in_downtime: list[int],
) -> None:
    start = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    trigger_id = make_trigger(
        since=start, schedule="*/5 * * * *", catch_up=policy, catch_up_limit=3
    )
    clock = ManualClock(start)
    before = scheduler(clock)
    drive(before, clock, start + 10 * MINUTE)  # fires 10:05 and 10:10
    before.resign()
    # down until 10:42:30: 10:15 .. 10:40 are missed, the newest 150 s ago
    clock.current = start + 42 * MINUTE + timedelta(seconds=30)
    drive(scheduler(clock), clock, start + 55 * MINUTE)

    rows = ticks(session_factory, trigger_id)
    assert [at for at, _, _ in rows] == [start + n * MINUTE for n in range(5, 56, 5)]
    fired = [at for at, outcome, _ in rows if outcome == "started"]
    again = [start + n * MINUTE for n in (5, 10, *fired_in_downtime, 45, 50, 55)]
    assert fired == again
    reasons = {reason for _, outcome, reason in rows if outcome == "skipped"}
    assert len(reasons) == (policy != "all" or len(fired_in_downtime) < 6)
    assert job_count(session_factory, trigger_id) == len(fired)


def test_two_schedulers_one_leader_every_tick_once(
    session_factory: Any, make_trigger: Any, scheduler: Any
) -> None:
    origin = datetime.now(UTC).replace(second=0, microsecond=0) + 5 * MINUTE
    clock = ScaledClock(origin, time.time(), 600.0)  # a minute is 0.1 s
    ids = [make_trigger(schedule="* * * * *", catch_up_limit=100) for _ in range(3)]
    first, second = scheduler(clock, name="first"), scheduler(clock, name="second")
    stop = threading.Event()
    threads = [threading.Thread(target=s.run, args=(stop,)) for s in (first, second)]
    for thread in threads:
        thread.start()
    try:
        _wait(lambda: len(starts(first)) + len(starts(second)) >= 30)
        leader, other = (first, second) if first.leading else (second, first)
        assert leader.leading and not other.leading
        assert not other.fired, "the follower fired while the other led"
        # the leader loses its connection, and with it the lock
        with unit_of_work(session_factory) as session:
            session.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name = :name"
                ),
                {"name": f"autostep {leader.name}"},
            )
        _wait(lambda: len(starts(first)) + len(starts(second)) >= 60)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)

    for trigger_id in ids:
        rows = ticks(session_factory, trigger_id)
        times = [at for at, _, _ in rows]
        assert times == expected({"schedule": "* * * * *"}, times[0] - MINUTE, times[-1])
        assert {outcome for _, outcome, _ in rows} == {"started"}, rows
        assert job_count(session_factory, trigger_id) == len(rows)
    both = starts(first) + starts(second)
    assert len(both) == len({(r.trigger_id, r.scheduled_at) for r in both})


def starts(scheduler: Recording) -> list[TickResult]:
    return [r for _, r in scheduler.fired if r.outcome == FireOutcome.STARTED]


def test_a_change_or_a_disable_is_followed_within_a_second(
    session_factory: Any, make_trigger: Any, scheduler: Any
) -> None:
    start = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    changed = make_trigger(since=start, schedule="*/5 * * * *")
    disabled = make_trigger(since=start, schedule="* * * * *")
    clock = ManualClock(start)
    sched = scheduler(clock)
    second = timedelta(seconds=1)
    drive(sched, clock, start + 2 * MINUTE + 30 * second, every=second)
    with unit_of_work(session_factory) as session:
        triggers.update_trigger(session, changed, config={"schedule": "* * * * *"})
        triggers.update_trigger(session, disabled, enabled=False)
        # the change counts from the simulated now, standing in for the database's clock
        session.execute(
            update(Trigger).where(Trigger.id == changed).values(active_since=clock.current)
        )
    drive(sched, clock, start + 7 * MINUTE, every=second)

    assert started(session_factory, changed) == [start + n * MINUTE for n in (3, 4, 5, 6, 7)]
    assert started(session_factory, disabled) == [start + n * MINUTE for n in (1, 2)]
    late = [(at, r) for at, r in sched.fired if r.scheduled_at and at - r.scheduled_at >= second]
    assert not late, f"ticks fired a second or more late: {late}"


def _wait(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_catch_up_cut_short_keeps_the_rounds_that_committed(
    session_factory: Any, make_trigger: Any, scheduler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    config = {"schedule": "* * * * *", "catch_up": "all", "catch_up_limit": 10}
    trigger_id = make_trigger(since=start, **config)
    clock = ManualClock(start + 5 * MINUTE + timedelta(seconds=1))  # five ticks due at once
    sched = scheduler(clock)
    assert sched.try_lead()
    import autostep.scheduler.local as local

    real, calls = local.fire_ticks, []

    def fire_then_fail(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:  # the third round's transaction never commits
            raise local.DatabaseUnavailable("the database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "fire_ticks", fire_then_fail)
    with pytest.raises(local.DatabaseUnavailable):
        sched.step()
    # each round commits on its own: the first two ticks stay fired, with their jobs
    assert started(session_factory, trigger_id) == [start + MINUTE, start + 2 * MINUTE]
    assert job_count(session_factory, trigger_id) == 2
    monkeypatch.setattr(local, "fire_ticks", real)
    sched.step()  # the next pass goes on from the last recorded tick
    assert started(session_factory, trigger_id) == [start + n * MINUTE for n in range(1, 6)]
