"""The autostep workloads: benchmark A (latency) and B (throughput).

The bench process is a client as the gateway or the CLI is: it publishes
workflows and starts jobs through :mod:`autostep.catalog` and
:mod:`autostep.runs` in its own transactions, and watches the job rows
with a dedicated autocommit connection. The work itself happens in the
runner and relay processes.
"""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg

from bench.probes import Sampler, StepTracer
from bench.report import median, pct, row, say, verdict
from bench.resources import CpuMeter, Platform, cpu_per_step, libpq

__all__ = [
    "TARGET_CPU_MS_PER_STEP",
    "TARGET_LATENCY_S",
    "TARGET_THROUGHPUT",
    "Client",
    "chain",
    "idle_starts",
    "latency",
    "throughput",
]

TARGET_LATENCY_S = 0.09
TARGET_THROUGHPUT = 1000.0
#: Milliseconds of CPU per step, autostep's processes plus PostgreSQL and RabbitMQ.
TARGET_CPU_MS_PER_STEP = 2.0


def chain(name: str, length: int, n: int = 10) -> dict[str, Any]:
    """A linear workflow of ``length`` ``fibo`` steps, each with config ``{n: n}``."""
    steps = [
        {
            "name": f"s{i}",
            "function": "fibo",
            "config": {"n": n},
            "next": [{"to": f"s{i + 1}"}] if i < length else [],
        }
        for i in range(1, length + 1)
    ]
    return {"name": name, "steps": steps}


class Client:
    """Publishes workflows, starts jobs and waits for them."""

    def __init__(self, plat: Platform, project: str = "bench") -> None:
        from autostep.catalog import create_project
        from autostep.db import make_engine, make_session_factory, unit_of_work

        self.plat = plat
        self.project = project
        self.engine = make_engine(url=plat.database_url)
        self.factory = make_session_factory(self.engine)
        self.poll = psycopg.connect(libpq(plat.database_url), autocommit=True)
        self.published: set[str] = set()
        #: Queries ``wait_all`` made, to take the bench's own out of the database's counters.
        self.polls = 0
        with unit_of_work(self.factory) as session:
            create_project(session, project)

    def close(self) -> None:
        self.poll.close()
        self.engine.dispose()

    def publish(self, definition: dict[str, Any]) -> None:
        from autostep.catalog import publish_workflow
        from autostep.db import unit_of_work

        with unit_of_work(self.factory) as session:
            publish_workflow(session, self.project, definition)
        self.published.add(definition["name"])

    def start(self, workflow: str, count: int = 1) -> list[str]:
        """Start ``count`` runs of ``workflow`` in one transaction."""
        from autostep.db import unit_of_work
        from autostep.runs import start_job

        with unit_of_work(self.factory) as session:
            jobs = [start_job(session, self.project, workflow, {}) for _ in range(count)]
            return [str(job.id) for job in jobs]

    def wait_one(self, job_id: str, timeout: float, interval: float = 0.002) -> str:
        """Poll the job every ``interval`` s until it is finished; its status."""
        from autostep.exceptions import JobStillRunning
        from autostep.queries import wait_for_job

        try:
            view = wait_for_job(self.factory, job_id, timeout=timeout, interval=interval)
        except JobStillRunning as exc:
            self.plat.check_alive()
            raise RuntimeError(f"{exc}\n{self.state()}") from exc
        return str(view["status"])

    def wait_all(self, job_ids: list[str], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        query = "SELECT count(*) FROM job WHERE id = ANY(%s::uuid[]) AND status = 'running'"
        while True:
            self.polls += 1
            if not self.poll.execute(query, (job_ids,)).fetchone()[0]:  # type: ignore[index]
                return
            self.plat.check_alive()
            if time.perf_counter() > deadline:
                raise RuntimeError(f"jobs still running after {timeout}s\n{self.state()}")
            time.sleep(0.01)

    def outcome(self, job_ids: list[str]) -> tuple[float, int, int]:
        """(first created_at to last finished_at in s, succeeded steps, unsuccessful jobs)."""
        span, failed = self.poll.execute(
            "SELECT extract(epoch FROM max(finished_at) - min(created_at)),"
            " count(*) FILTER (WHERE status <> 'succeeded') FROM job WHERE id = ANY(%s::uuid[])",
            (job_ids,),
        ).fetchone()  # type: ignore[misc]
        steps = self.poll.execute(
            "SELECT count(*) FROM process WHERE job_id = ANY(%s::uuid[]) AND status = 'succeeded'",
            (job_ids,),
        ).fetchone()[0]  # type: ignore[index]
        return float(span or 0.0), int(steps), int(failed)

    def longest_wait(self, job_id: str) -> tuple[float, str, bool]:
        """The longest time a step of the job waited to start: s, the step, whether first.

        Measured from the job's start (for its first step, which the relay
        publishes) or from the end of the step before (the tracer's "between
        steps", for one run).
        """
        rows = self.poll.execute(
            "SELECT p.step, extract(epoch FROM p.started_at - j.created_at),"
            " extract(epoch FROM p.finished_at - j.created_at)"
            " FROM process AS p JOIN job AS j ON j.id = p.job_id"
            " WHERE p.job_id = %s AND p.started_at IS NOT NULL ORDER BY p.started_at",
            (job_id,),
        ).fetchall()
        longest, where, first, previous_end = 0.0, "", False, 0.0
        for index, (step, started, finished) in enumerate(rows):
            if float(started) - previous_end >= longest:
                longest, where, first = float(started) - previous_end, str(step), index == 0
            previous_end = float(finished if finished is not None else started)
        return longest, where, first

    def db_counters(self) -> dict[str, float]:
        """Cumulative counters of the bench database (and the server's WAL position)."""
        found = self.poll.execute(
            "SELECT xact_commit + xact_rollback, tup_inserted, tup_updated, tup_deleted,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
            " FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        assert found is not None
        keys = ("transactions", "rows inserted", "rows updated", "rows deleted", "WAL bytes")
        return dict(zip(keys, (float(v) for v in found), strict=True))

    def state(self) -> str:
        """Where things stand, for an error message: processes, outbox, logs."""
        processes = self.poll.execute(
            "SELECT status, count(*) FROM process GROUP BY status"
        ).fetchall()
        outbox = self.poll.execute(
            "SELECT type, count(*), count(lease_token), max(attempts) FROM outbox GROUP BY type"
        ).fetchall()
        logs = "\n".join(f"--- {name} ---\n{self.plat.tail(name, 15)}" for name in self.plat.procs)
        return (
            f"processes by status: {processes}\n"
            f"outbox (type, rows, leased, max attempts): {outbox}\n{logs}"
        )


def latency(client: Client, steps: int, runs: int, traced_runs: int) -> dict[str, Any]:
    """Benchmark A: ``runs`` runs of a linear workflow, one after another."""
    name = f"linear{steps}"
    client.publish(chain(name, steps))
    t0 = time.perf_counter()
    client.wait_one(client.start(name)[0], timeout=60)
    row("warm-up run", f"{time.perf_counter() - t0:.3f} s")
    meter = CpuMeter(client.plat)
    times, spans, job_ids = [], [], []
    for index in range(runs):
        job_id = client.start(name)[0]
        committed = time.perf_counter()
        status = client.wait_one(job_id, timeout=60)
        elapsed = time.perf_counter() - committed
        span, done, _ = client.outcome([job_id])
        times.append(elapsed)
        spans.append(span)
        job_ids.append(job_id)
        note = f"{status}, {done} steps, {elapsed / steps * 1000:.1f} ms/step"
        row(f"run {index + 1}", f"{elapsed:.3f} s", note)
    cpu = meter.report()
    per_step = cpu_per_step(cpu, runs * steps, list(client.plat.procs))
    result: dict[str, Any] = {
        "runs_s": times,
        "median_s": median(times),
        "cpu": cpu,
        "cpu_ms_per_step": per_step,
    }
    say()
    row(
        f"median of {runs} runs",
        f"{median(times):.3f} s",
        f"{median(times) / steps * 1e3:.2f} ms/step",
    )
    row("target", f"<= {TARGET_LATENCY_S:.3f} s", verdict(median(times) <= TARGET_LATENCY_S))
    row("  (server: job created_at .. finished_at, median)", f"{median(spans):.3f} s")
    slowest = max(range(runs), key=times.__getitem__)
    wait, step, first = client.longest_wait(job_ids[slowest])
    row(
        f"  slowest run ({slowest + 1}): its longest wait",
        f"{wait * 1000:.1f} ms",
        f"before {step}" + (", the first step (the relay publishes it)" if first else ""),
    )
    result["slowest_wait_ms"] = wait * 1000
    if traced_runs:
        result["hops_ms"] = _traced(client, name, traced_runs)
    return result


def _traced(client: Client, name: str, runs: int) -> dict[str, float]:
    tracer = StepTracer(client.plat, "fibo")
    hops: dict[str, list[float]] = {}
    try:
        for _ in range(runs):
            job_id = client.start(name)[0]
            client.wait_one(job_id, timeout=60)
            for hop, values in tracer.hops(client.poll, job_id).items():
                hops.setdefault(hop, []).extend(values)
    finally:
        tracer.close()
    say()
    say(f"  per step, from {runs} more runs with a tracer on the step messages (ms):")
    row("  hop", "median", "p90")
    medians = {}
    for hop, values in hops.items():
        medians[hop] = median(values) * 1000
        row(f"  {hop}", f"{medians[hop]:.2f}", f"{pct(values, 90) * 1000:.2f}")
    total = sum(v for k, v in medians.items() if not k.startswith("("))
    row("  sum of the two hops", f"{total:.2f}")
    steps = len(hops.get("in-step", []))
    brokered = len(hops.get("(through the broker: commit+publish)", []))
    row("  steps handed over through the broker", f"{brokered} of {steps}")
    say("  (the others ran in the runner that wrote them, straight from their outbox row)")
    return medians


def idle_starts(client: Client, runs: int) -> dict[str, Any]:
    """Runs of one step started alone, each after 1-3 s with nothing to do.

    The wait from a run's start to its first step, which the relay
    publishes: what a webhook or a cron tick meets on a quiet platform,
    where the relay and the broker connections sit idle between runs.
    """
    client.publish(chain("single", 1))
    pause = random.Random(7)
    waits = []
    for _ in range(runs):
        time.sleep(pause.uniform(1.0, 3.0))
        job_id = client.start("single")[0]
        client.wait_one(job_id, timeout=30)
        waits.append(client.longest_wait(job_id)[0])
    result = {
        "median_ms": median(waits) * 1000,
        "p90_ms": pct(waits, 90) * 1000,
        "max_ms": max(waits) * 1000,
    }
    row(
        f"start -> first step, {runs} runs",
        f"{result['median_ms']:.1f} ms",
        f"median; p90 {result['p90_ms']:.1f} ms, max {result['max_ms']:.1f} ms",
    )
    return result


def throughput(client: Client, jobs: int, steps: int, batches: int) -> dict[str, Any]:
    """Benchmark B: ``jobs`` runs of a ``steps``-step workflow started together."""
    name = f"wide{steps}"
    if name not in client.published:
        client.publish(chain(name, steps))
        client.wait_one(client.start(name)[0], timeout=60)  # warms the version caches
    from autostep.topology import step_queue_name

    sampler = Sampler(client.plat, step_queue_name("fibo"))
    try:
        counters, polls = client.db_counters(), client.polls
        meter = CpuMeter(client.plat)
        t0 = time.perf_counter()
        job_ids: list[str] = []
        per_batch = -(-jobs // batches)
        for first in range(0, jobs, per_batch):
            job_ids += client.start(name, min(per_batch, jobs - first))
        started = time.perf_counter() - t0
        client.wait_all(job_ids, timeout=300)
        elapsed = time.perf_counter() - t0
        cpu = meter.report()
    finally:
        occupancy = sampler.close()
    time.sleep(0.6)  # the statistics collector reports every 500 ms
    after = client.db_counters()
    span, done, failed = client.outcome(job_ids)
    rate = done / elapsed
    cpu_ms = cpu_per_step(cpu, done, list(client.plat.procs))
    row(f"start {jobs} runs in {batches} transactions", f"{started:.2f} s")
    row("all finished after", f"{elapsed:.2f} s", f"{failed} runs did not succeed")
    row("steps completed", f"{done}")
    row("throughput", f"{rate:,.0f} steps/s", f"(server span {span:.2f} s: {done / span:,.0f}/s)")
    row("target", f">= {TARGET_THROUGHPUT:,.0f} steps/s", verdict(rate >= TARGET_THROUGHPUT))
    per_step = {key: (after[key] - counters[key]) / max(1, done) for key in counters}
    own = client.polls - polls + sampler.queries + 1  # the bench's read-only transactions
    per_step["transactions"] -= own / max(1, done)
    say(
        "  per step in the database: "
        + ", ".join(f"{value:.1f} {key}" for key, value in per_step.items() if key != "WAL bytes")
        + f", {per_step['WAL bytes'] / 1024:.1f} KiB WAL (server-wide)"
    )
    if occupancy:
        say(f"  where the {jobs} in-flight steps were, on average ({len(sampler.samples)} samples;")
        say("  ms per step = count / throughput, by Little's law):")
        for field_name, value in occupancy.items():
            if field_name.startswith("db "):
                row(f"    {field_name} (sessions)", f"{value:.1f}")
            elif field_name == "outbox event rows":
                row(f"    {field_name}", f"{value:.1f}", "(events, not steps)")
            else:
                ms = value / rate * 1000 if rate else float("nan")
                row(f"    {field_name}", f"{value:.1f}", f"{ms:.1f} ms/step")
    if sampler.waits:
        waits = sorted(sampler.waits.items(), key=lambda item: -item[1])[:5]
        samples = len(sampler.samples)
        listed = ", ".join(f"{event} {count / samples:.1f}" for event, count in waits)
        say(f"      db active sessions by wait event: {listed}")
    return {
        "elapsed_s": elapsed,
        "steps": done,
        "steps_per_s": rate,
        "failed": failed,
        "cpu": cpu,
        "cpu_ms_per_step": cpu_ms,
        "occupancy": occupancy,
        "db_per_step": per_step,
        "start_s": started,
    }
