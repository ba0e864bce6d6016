"""More runners and relays, and a long run: ``bench/run.py --scale`` and ``--rss-steps``.

:func:`scale_to` starts or stops runner and relay processes (the command
lines of ``run.py``: ``runner1``, ``runner2`` … and ``relay``, ``relay2`` …;
``runner1`` and ``relay`` always stay) and waits until they are ready: a new
runner's consumers attached, the outbox shards spread over the relays.
:func:`scale_matrix` runs benchmark B for each combination of runners and
relays. :func:`rss_soak` keeps feeding B-shaped batches to ``runner1`` and
one relay until ``runner1`` has completed a given number of steps, and
reads both processes' resident memory along the way.
"""

from __future__ import annotations

import math
import time
from typing import Any

from bench import baselines
from bench.report import row, say, section, verdict
from bench.resources import RUNNER_ARGS, Platform, rss_kib
from bench.workload import Client, chain, throughput

__all__ = [
    "TARGET_RSS_MB",
    "Runner1Steps",
    "parse_combos",
    "print_matrix",
    "rss_soak",
    "rss_summary",
    "scale_matrix",
    "scale_to",
]

#: Resident memory of a runner after a long run, in MB (10**6 bytes).
TARGET_RSS_MB = 150.0
#: Seconds to wait for the relays to share the outbox shards out.
SHARDS_TIMEOUT_S = 30.0


def parse_combos(text: str) -> list[tuple[int, int]]:
    """``"1x1,2x1"`` -> ``[(1, 1), (2, 1)]``: runners x relays."""
    combos = []
    for item in text.split(","):
        runners, _, relays = item.strip().partition("x")
        combo = (int(runners), int(relays))
        if min(combo) < 1:
            raise ValueError(f"{item!r}: at least one runner and one relay")
        combos.append(combo)
    return combos


def _runner_names(plat: Platform) -> list[str]:
    return sorted((n for n in plat.procs if n.startswith("runner")), key=lambda n: int(n[6:]))


def _relay_name(index: int) -> str:
    return "relay" if index == 1 else f"relay{index}"


def scale_to(
    plat: Platform, client: Client, counter: Runner1Steps, runners: int, relays: int
) -> None:
    """Run exactly ``runners`` runners and ``relays`` relays; return once they are ready.

    Call it between benchmarks, with no step in flight: ``counter`` closes
    the span that ends here.
    """
    counter.update(alone=runners == 1)
    for name in _runner_names(plat):
        if int(name[6:]) > runners:
            plat.stop(name)
    for index in range(2, 100):
        if index > relays and _relay_name(index) in plat.procs:
            plat.stop(_relay_name(index))
    started = []
    for index in range(1, runners + 1):
        if f"runner{index}" not in plat.procs:
            plat.spawn_autostep(f"runner{index}", *RUNNER_ARGS)
            started.append(f"runner{index}")
    for index in range(1, relays + 1):
        if _relay_name(index) not in plat.procs:
            plat.spawn_autostep(_relay_name(index), "relay")
    for name in started:
        _wait_connected(plat, name)
    if started:
        time.sleep(1.0)  # every consumer of the new runners attached
    _wait_for_shards(plat, client, relays)


def _wait_connected(plat: Platform, name: str) -> None:
    baselines.wait_until(lambda: "Connected to" in plat.tail(name, 50), 60, plat, name)


def _wait_for_shards(plat: Platform, client: Client, relays: int) -> None:
    """Until every outbox shard is held and spread evenly over ``relays`` relays.

    Relays rebalance every ``relay_rebalance_seconds``; until then a shard
    whose relay stopped is drained by nobody, and a new relay drains nothing.
    """
    from autostep import relay as relay_module
    from autostep.outbox import SHARDS

    namespace = getattr(relay_module, "SHARD_LOCK", None)
    query = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = %s"
        " AND objsubid = 2 AND granted AND database ="
        " (SELECT oid FROM pg_database WHERE datname = current_database()) GROUP BY pid"
    )
    fair = math.ceil(SHARDS / relays)
    deadline = time.perf_counter() + SHARDS_TIMEOUT_S
    while namespace is not None and time.perf_counter() < deadline:
        held = [int(r[0]) for r in client.poll.execute(query, (namespace,)).fetchall()]
        if len(held) == relays and sum(held) == SHARDS and max(held) <= fair:
            return
        plat.check_alive()
        time.sleep(0.2)
    say(f"  (the outbox shards were not spread over {relays} relays after the wait; going on)")


def scale_matrix(
    plat: Platform,
    client: Client,
    counter: Runner1Steps,
    combos: list[tuple[int, int]],
    args: Any,
) -> list[dict[str, Any]]:
    """Benchmark B once per (runners, relays) combination; the rows of the table."""
    rows = []
    for runners, relays in combos:
        scale_to(plat, client, counter, runners, relays)
        section(f"scale: B with {runners} runner(s) x {relays} relay(s)")
        result = throughput(client, args.jobs, args.job_steps, args.batches)
        ms = result["cpu_ms_per_step"]
        rows.append(
            {
                "runners": runners,
                "relays": relays,
                "steps_per_s": result["steps_per_s"],
                "cpu_ms_per_step": ms,
                "runners_ms": sum(v for k, v in ms.items() if k.startswith("runner")),
                "relays_ms": sum(v for k, v in ms.items() if k.startswith("relay")),
                "pg_ms": ms["pg bench db"] + ms["pg other"],
                "rabbitmq_ms": ms["rabbitmq"],
                "cores_busy": result["cpu"]["machine"],
            }
        )
    return rows


def print_matrix(rows: list[dict[str, Any]]) -> None:
    say(
        f"  {'runners x relays':<18} {'steps/s':>9} {'CPU ms/step':>12}"
        f" {'runners':>8} {'relays':>7} {'PG':>6} {'Rabbit':>7} {'cores busy':>11}"
    )
    for r in rows:
        say(
            f"  {str(r['runners']) + ' x ' + str(r['relays']):<18} {r['steps_per_s']:>9,.0f}"
            f" {r['cpu_ms_per_step']['total']:>12.2f} {r['runners_ms']:>8.2f}"
            f" {r['relays_ms']:>7.2f} {r['pg_ms']:>6.2f} {r['rabbitmq_ms']:>7.2f}"
            f" {r['cores_busy']:>11.2f}"
        )


class Runner1Steps:
    """The steps ``runner1`` surely completed: those of the spans it was the only runner.

    Made while ``runner1`` is the only runner the database has seen, so every
    step succeeded so far is its. Steps completed while other runners ran are
    not counted (they were shared out in unknown parts): a lower bound.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.total = 0
        self.mark = 0
        self.alone = True

    def _succeeded(self) -> int:
        found = self.client.poll.execute(
            "SELECT count(*) FROM process WHERE status = 'succeeded'"
        ).fetchone()
        return int(found[0]) if found else 0

    def update(self, alone: bool) -> int:
        """Count the span that just ended; ``alone``: runner1 is the only runner from now."""
        now = self._succeeded()
        if self.alone:
            self.total += now - self.mark
        self.mark, self.alone = now, alone
        return self.total


def _mb(kib: int) -> float:
    return kib * 1024 / 1e6


def rss_soak(
    plat: Platform,
    client: Client,
    counter: Runner1Steps,
    steps: int,
    warm: dict[str, dict[str, int]],
    args: Any,
) -> dict[str, Any]:
    """Feed B-shaped batches to runner1 and one relay until runner1 completed ``steps``."""
    scale_to(plat, client, counter, 1, 1)
    done = counter.total
    section(f"runner RSS: B-shaped batches until runner1 has completed {steps:,} steps")
    row("steps runner1 completed so far (alone)", f"{done:,}")
    name = f"wide{args.job_steps}"
    if name not in client.published:
        client.publish(chain(name, args.job_steps))
    per_batch = -(-args.jobs // args.batches)
    report_every = max(1, steps // 10)
    next_report = done + report_every
    last_t, last = time.perf_counter(), done
    samples: list[dict[str, Any]] = []
    while done < steps:
        job_ids: list[str] = []
        for start in range(0, args.jobs, per_batch):
            job_ids += client.start(name, min(per_batch, args.jobs - start))
        client.wait_all(job_ids, timeout=300)
        done = counter.update(alone=True)
        if done >= next_report or done >= steps:
            next_report = done + report_every
            now = time.perf_counter()
            rate, last_t, last = (done - last) / (now - last_t), now, done
            sample = {key: rss_kib(plat.procs[key].pid) for key in ("runner1", "relay")}
            samples.append({"steps": done, **sample})
            row(
                f"after {done:,} steps",
                f"{_mb(sample['runner1']['VmRSS']):.1f} MB",
                f"relay {_mb(sample['relay']['VmRSS']):.1f} MB; since the line before:"
                f" {rate:,.0f} steps/s",
            )
    end = samples[-1]
    result = {
        "steps": done,
        "warm_kib": warm,
        "end_kib": {key: end[key] for key in ("runner1", "relay")},
        "samples": samples,
    }
    say()
    for key in ("runner1", "relay"):
        row(
            f"{key} RSS, after warm-up -> after {done:,} steps",
            f"{_mb(warm[key]['VmRSS']):.1f} -> {_mb(end[key]['VmRSS']):.1f} MB",
            f"peak {_mb(end[key]['VmHWM']):.1f} MB",
        )
    rss = _mb(end["runner1"]["VmRSS"])
    row("target (runner1)", f"<= {TARGET_RSS_MB:.0f} MB", verdict(rss <= TARGET_RSS_MB))
    return result


def rss_summary(result: dict[str, Any]) -> None:
    rss = _mb(result["end_kib"]["runner1"]["VmRSS"])
    row(
        f"runner1 RSS after {result['steps']:,} steps",
        f"{rss:.1f} MB",
        f"target <= {TARGET_RSS_MB:.0f} MB: {verdict(rss <= TARGET_RSS_MB)}",
    )
    row(
        "  after warm-up; relay after warm-up -> end",
        f"{_mb(result['warm_kib']['runner1']['VmRSS']):.1f} MB",
        f"relay {_mb(result['warm_kib']['relay']['VmRSS']):.1f}"
        f" -> {_mb(result['end_kib']['relay']['VmRSS']):.1f} MB",
    )
