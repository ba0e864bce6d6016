"""Kills of the local scheduler lose no cron tick and double none.

``autostep scheduler run`` (local backend) fires three every-minute triggers
(catch-up ``all``, limit 100) on a simulated clock 150 times faster than
real time, so each fires two and a half ticks a second, and a downtime of up
to 40 s (a restart on a loaded machine) stays within the catch-up limit
(ticks beyond it are skipped, or not even recorded, by design).
``AUTOSTEP_SCHEDULER_CLOCK``
carries the timeline's origins, so every restarted incarnation goes on
along the same timeline; the ticks of a downtime (a restart takes a second
or two, a few simulated minutes) are caught up.

Round after round, after a random moment the process is frozen (SIGSTOP)
and, when one of its sessions is inside a tick's transaction (it holds a
row lock on ``trigger_tick``: the tick is inserted, nothing committed), it
is killed right there with SIGKILL; otherwise it is let go on for a few
milliseconds and frozen again, at most ``AIM_FOR`` seconds, then killed
wherever it is. Kills inside a tick's transaction are counted: at least
one must happen, so the test fails when the chaos cut nothing. Then the
process is restarted, until at least ``MIN_TICKS`` ticks were recorded and
``MIN_KILLS`` kills happened.

**Nothing lost or doubled**: for each trigger, every tick from its first
to its last recorded one is in ``trigger_tick`` exactly once, started, with
its own job, and the trigger has no other job.

The random choices come from ``random.Random(seed)``; the seed is printed
and ``AUTOSTEP_CRASH_SEED`` replays them.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import select, update

from autostep import triggers
from autostep.catalog import create_project
from autostep.db import unit_of_work
from autostep.models import Job, Trigger, TriggerTick
from autostep.scheduler.clock import CLOCK_SETTING, ScaledClock
from autostep.settings import libpq_dsn
from autostep.trigger_kinds import CronConfig, next_fire_times
from tests.e2e.conftest import ManagedProcess
from tests.helpers import publish

pytestmark = [pytest.mark.e2e, pytest.mark.crash]

SPEED = 150.0
TRIGGERS = 3
MIN_TICKS = 200
MIN_KILLS = 8
#: Rounds, and seconds, the test goes on before it gives up reaching the figures above (a
#: loaded machine restarts the scheduler slowly, and it fires fewer ticks between kills).
MAX_ROUNDS = 100
MAX_SECONDS = 150.0
#: Seconds a round tries to catch the scheduler inside a tick's transaction.
AIM_FOR = 1.0
DEFINITION = {"name": "w", "steps": [{"name": "a", "function": "t_noop"}]}
IN_A_TICK = """
SELECT count(*) FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
JOIN pg_class c ON c.oid = l.relation
WHERE a.application_name = %s AND c.relname = 'trigger_tick' AND l.mode = 'RowExclusiveLock'
"""


@pytest.mark.timeout(MAX_SECONDS + 90)
def test_kills_of_the_local_scheduler_lose_and_double_no_tick(
    session_factory: Any, database_url: str, autostep_process: Any
) -> None:
    seed = int(os.environ.get("AUTOSTEP_CRASH_SEED", random.randrange(2**32)))
    print(f"AUTOSTEP_CRASH_SEED={seed}")
    chance = random.Random(seed)
    project = f"p-{uuid.uuid4().hex[:8]}"
    with unit_of_work(session_factory) as session:
        create_project(session, project)
    publish(session_factory, project, DEFINITION)
    config = {"schedule": "* * * * *", "catch_up": "all", "catch_up_limit": 100}
    with unit_of_work(session_factory) as session:
        # the scheduler follows every cron trigger: those earlier tests left stay quiet
        session.execute(update(Trigger).where(Trigger.kind == "cron").values(enabled=False))
        ids = [
            triggers.create_trigger(session, project, "w", f"t{n}", "cron", config).trigger.id
            for n in range(TRIGGERS)
        ]
    clock = ScaledClock(datetime.now(UTC), time.time(), SPEED)
    env = {
        CLOCK_SETTING: clock.setting(),
        "AUTOSTEP_SCHEDULER_BACKEND": "local",
        "AUTOSTEP_SCHEDULER_RETRY_SECONDS": "0.1",
        "AUTOSTEP_SCHEDULER_POLL_SECONDS": "0.2",
    }
    scheduler = autostep_process("scheduler", "scheduler", "run", env=env, ready=_leading)
    dsn = libpq_dsn(database_url)
    cut = rounds = 0
    give_up = time.monotonic() + MAX_SECONDS
    with psycopg.connect(dsn, autocommit=True) as db:
        while (rounds < MAX_ROUNDS and time.monotonic() < give_up) and (
            scheduler.kills < MIN_KILLS or cut < 1 or _ticks(db, ids) < MIN_TICKS
        ):
            rounds += 1
            time.sleep(chance.uniform(0.1, 0.8))
            cut += _kill_in_a_tick(scheduler, db)
            scheduler.start()
        recorded = _ticks(db, ids)
    scheduler.terminate()
    print(f"{rounds} rounds, {scheduler.kills} kills, {cut} inside a tick, {recorded} ticks")
    assert cut >= 1, "no kill hit a tick's transaction"
    assert scheduler.kills >= MIN_KILLS and recorded >= MIN_TICKS

    every_minute = CronConfig.model_validate(config)
    with unit_of_work(session_factory) as session:
        for trigger_id in ids:
            rows = list(
                session.scalars(
                    select(TriggerTick)
                    .where(TriggerTick.trigger_id == trigger_id)
                    .order_by(TriggerTick.scheduled_at)
                )
            )
            times = [row.scheduled_at for row in rows]
            first, last = times[0], times[-1]
            want = next_fire_times(every_minute, first - timedelta(seconds=1), len(times) + 1)
            assert times == [tick for tick in want if tick <= last], "a tick is missing"
            assert [row.outcome for row in rows] == ["started"] * len(rows), [
                (row.scheduled_at, row.reason) for row in rows if row.outcome != "started"
            ]
            jobs = Counter(session.scalars(select(Job.id).where(Job.trigger_id == trigger_id)))
            tick_jobs = Counter(row.job_id for row in rows)
            doubled = len(jobs) - len(rows)
            assert doubled == 0, f"{doubled} more jobs than ticks"
            assert tick_jobs == jobs, "a tick's job is not the trigger's job"


def _leading(process: ManagedProcess) -> bool:
    return "leading" in process.output()


def _ticks(db: psycopg.Connection[Any], ids: list[uuid.UUID]) -> int:
    row = db.execute(
        "SELECT count(*) FROM trigger_tick WHERE outcome = 'started' AND trigger_id = ANY(%s)",
        (ids,),
    ).fetchone()
    return int(row[0]) if row else 0


def _kill_in_a_tick(process: ManagedProcess, db: psycopg.Connection[Any]) -> int:
    """Freeze the process until it is inside a tick's transaction (or AIM_FOR), then kill it.

    1 when the kill cut a tick's transaction, else 0.
    """
    assert process.pid is not None
    deadline = time.monotonic() + AIM_FOR
    inside = False
    while True:
        os.kill(process.pid, signal.SIGSTOP)
        row = db.execute(IN_A_TICK, (process.incarnation,)).fetchone()
        inside = bool(row and row[0])
        if inside or time.monotonic() > deadline:
            break
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.003)
    process.kill()
    return int(inside)
