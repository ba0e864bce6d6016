"""Local scheduler benchmark: 1,000 cron triggers due in the same minute.

``.venv/bin/python bench/scheduler_local.py [--triggers 1000] [--workers 1,4]``

In its own database (see :mod:`bench.resources`) it creates ``--triggers``
every-minute cron triggers of one workflow, then measures:

- **baseline**: the same number of plain :func:`autostep.runs.start_job`
  calls, each in its own unit of work, all "due" at one instant and started
  one after another from this process (and from 4 threads);
- **scheduler**: ``autostep scheduler run`` (local backend) in a subprocess,
  for each ``--workers`` value, with ``AUTOSTEP_SCHEDULER_CLOCK`` at real
  speed, shifted so that a minute boundary comes 45 s after it starts (its
  first pass over the triggers is done by then). Every trigger is due at
  that boundary.

The lag of a job is from the instant it was due to the instant its commit
became visible: a second connection counts the committed jobs (ticks)
every :data:`POLL` seconds, and the *k*-th job's lag is when the count
first reached *k*. Not ``job.created_at``: that is the ``now()`` of the
transaction's start, and a batch that starts early and commits late would
look fast. No relay or runner runs: jobs only accumulate. Target: p99 ≤ 1 s
on 2 cores. A script, not a test: it exits 0 whether the target is met or
not.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import median, pct, row, say, section, verdict
from bench.resources import Platform, bench_platform, libpq

TARGET_P99 = 1.0
#: Seconds between two counts of the committed jobs.
POLL = 0.01
LEAD_SECONDS = 45.0
DEFINITION = {"name": "w", "steps": [{"name": "a", "function": "noop"}]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--workers", default="1,4", help="AUTOSTEP_SCHEDULER_WORKERS values")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    with bench_platform(keep_logs=args.keep_logs) as plat:
        from autostep import triggers
        from autostep.catalog import create_project, publish_workflow
        from autostep.db import make_engine, make_session_factory, unit_of_work

        sessions = make_session_factory(make_engine(url=plat.database_url))
        with unit_of_work(sessions) as session:
            create_project(session, "bench")
            publish_workflow(session, "bench", DEFINITION)
            for n in range(args.triggers):
                triggers.create_trigger(
                    session, "bench", "w", f"t{n}", "cron", {"schedule": "* * * * *"}
                )
        section(f"{args.triggers} runs started at once, {_cores()} cores")
        for threads in (1, 4):
            lags = _baseline(plat, sessions, args.triggers, threads)
            _report(f"baseline: start_job loop, {threads} thread(s)", lags)
        boundary = None
        for workers in (int(w) for w in args.workers.split(",")):
            lags, boundary = _scheduler(plat, args.triggers, workers, boundary)
            _report(f"scheduler, {workers} worker(s)", lags)
            say(f"  {verdict(pct(lags, 99) <= TARGET_P99)} target p99 <= {TARGET_P99:.1f} s")
    return 0


def _baseline(plat: Platform, sessions: object, count: int, threads: int) -> list[float]:
    """Lags of ``count`` start_job calls all due at one instant, from ``threads`` threads."""
    from autostep.db import unit_of_work
    from autostep.runs import start_job

    batch = f"baseline-{uuid.uuid4().hex[:6]}"
    left = list(range(count))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not left:
                    return
                left.pop()
            with unit_of_work(sessions) as session:  # type: ignore[arg-type]
                start_job(session, "bench", "w", {"batch": batch}, trigger="api")

    count_committed = "SELECT count(*) FROM job WHERE input->>'batch' = %s"
    pool = [threading.Thread(target=work) for _ in range(threads)]
    due = time.time()
    for thread in pool:
        thread.start()
    lags = _commit_lags(plat, count_committed, (batch,), count, due, time.monotonic() + 120)
    for thread in pool:
        thread.join()
    return lags


def _commit_lags(
    plat: Platform, query: str, params: tuple[object, ...], count: int, due: float, until: float
) -> list[float]:
    """Seconds from ``due`` (Unix time) until each of ``count`` rows of ``query`` committed."""
    seen: list[float] = []
    with psycopg.connect(libpq(plat.database_url), autocommit=True) as db:
        while len(seen) < count and time.monotonic() < until:
            committed = db.execute(query, params).fetchone()[0]  # type: ignore[index]
            at = time.time()
            seen += [at - due] * (min(committed, count) - len(seen))
            time.sleep(POLL)
    return seen


def _scheduler(
    plat: Platform, count: int, workers: int, previous: datetime | None
) -> tuple[list[float], datetime]:
    """Lags of the ticks of ``count`` triggers due at one minute, fired by the scheduler."""
    from autostep.scheduler.clock import ScaledClock

    now = datetime.now(UTC)
    boundary = (now + timedelta(seconds=LEAD_SECONDS + 60)).replace(second=0, microsecond=0)
    if previous is not None:
        boundary = max(boundary, previous + timedelta(minutes=1))
    sim_origin = boundary - timedelta(seconds=LEAD_SECONDS)
    clock = ScaledClock(sim_origin, time.time(), 1.0)
    real_due = datetime.fromtimestamp(clock.real_origin, UTC) + timedelta(seconds=LEAD_SECONDS)
    with psycopg.connect(libpq(plat.database_url), autocommit=True) as db:
        # active from the start of the simulated timeline: nothing to catch up
        db.execute("UPDATE trigger SET active_since = %s", (sim_origin,))
        name = f"scheduler-{workers}"
        import os

        os.environ["AUTOSTEP_SCHEDULER_CLOCK"] = clock.setting()
        os.environ["AUTOSTEP_SCHEDULER_WORKERS"] = str(workers)
        plat.spawn_autostep(name, "scheduler", "run")
        lags = _commit_lags(
            plat,
            "SELECT count(*) FROM trigger_tick WHERE scheduled_at = %s AND job_id IS NOT NULL",
            (boundary,),
            count,
            real_due.timestamp(),
            time.monotonic() + LEAD_SECONDS + 120,
        )
        plat.stop(name)
    if len(lags) < count:
        say(f"  only {len(lags)} of {count} ticks started; see {plat.logs}/{name}.log")
    return lags, boundary


def _report(label: str, lags: list[float]) -> None:
    if not lags:
        row(label, "no jobs")
        return
    row(
        label,
        f"p50 {median(lags):.3f} s  p99 {pct(lags, 99):.3f} s  max {max(lags):.3f} s",
        f"{len(lags)} jobs, {len(lags) / max(max(lags), 1e-9):.0f} jobs/s",
    )


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    raise SystemExit(main())
