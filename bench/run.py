"""End-to-end benchmark of autostep: latency of a linear run, sustained throughput.

Run from the repository root (see ``bench/README.md``)::

    .venv/bin/python bench/run.py [--profile DIR] [--json FILE] [--code TREE]

It creates a database and a RabbitMQ vhost ``autostep_bench_<random>``,
measures baselines (PostgreSQL commits, confirmed publishes, a nameko RPC),
starts one ``autostep functions run autostep.functions.builtins`` and one
``autostep relay`` process against them as a user would, and measures

A. latency: a 40-step linear workflow of ``fibo(n=10)``, runs one after
   another, from the commit of ``start_job`` until the job row is finished;
B. throughput: 100 runs of a 10-step ``fibo(n=10)`` workflow started
   together, steps completed per second; with one runner, then two.

Optionally then B for several numbers of runners and relays (``--scale``),
and the runner's resident memory after many steps (``--rss-steps``).

Everything it created is removed at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path[0] == str(ROOT / "bench"):
    sys.path[0] = str(ROOT)  # import bench.* as a package; keep bench/ off the path

import psycopg  # noqa: E402

from bench import baselines  # noqa: E402
from bench.report import row, say, section, verdict  # noqa: E402
from bench.resources import (  # noqa: E402
    RUNNER_ARGS,
    Platform,
    bench_platform,
    libpq,
    quiet_imports,
    rabbitmqctl,
    rss_kib,
)
from bench.scaling import (  # noqa: E402
    Runner1Steps,
    parse_combos,
    print_matrix,
    rss_soak,
    rss_summary,
    scale_matrix,
    scale_to,
)
from bench.workload import (  # noqa: E402
    TARGET_CPU_MS_PER_STEP,
    TARGET_LATENCY_S,
    TARGET_THROUGHPUT,
    Client,
    chain,
    idle_starts,
    latency,
    throughput,
)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--linear-steps", type=int, default=40, help="A: steps (40)")
    parser.add_argument("--linear-runs", type=int, default=5, help="A: measured runs (5)")
    parser.add_argument("--traced-runs", type=int, default=2, help="A: runs with the tracer (2)")
    parser.add_argument("--jobs", type=int, default=100, help="B: runs started together (100)")
    parser.add_argument("--job-steps", type=int, default=10, help="B: steps per run (10)")
    parser.add_argument("--batches", type=int, default=4, help="B: start transactions (4)")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--no-two-runners", action="store_true", help="skip B with 2 runners")
    parser.add_argument(
        "--scale",
        type=parse_combos,
        metavar="RxL,...",
        help="then B for each runners x relays, e.g. 1x1,2x1,4x1,1x2,2x2 (off)",
    )
    parser.add_argument(
        "--rss-steps",
        type=int,
        metavar="N",
        help="at the end, B-shaped batches until runner1 completed N steps; its RSS (off)",
    )
    parser.add_argument(
        "--idle-starts",
        type=int,
        metavar="N",
        help="after A, N 1-step runs each started after 1-3 s idle: start -> first step (off)",
    )
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy runner and relay")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument(
        "--code",
        type=Path,
        default=ROOT,
        metavar="TREE",
        help="run runner and relay from this tree (a patched copy)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    return parser.parse_args(argv)


def _header(plat: Platform) -> dict[str, Any]:
    from autostep.topology import step_queue_arguments

    with psycopg.connect(libpq(plat.database_url), autocommit=True) as db:
        pg = {
            key: str(db.execute(f"SHOW {key}").fetchone()[0])  # type: ignore[index]
            for key in (
                "server_version",
                "synchronous_commit",
                "fsync",
                "wal_sync_method",
                "autovacuum",
            )
        }
    rabbit = rabbitmqctl("version", check=False).strip()
    queue_type = step_queue_arguments()["x-queue-type"]
    section("setup")
    row("machine", f"{os.cpu_count()} cores", f"load average {os.getloadavg()[0]:.2f} at start")
    row("python", platform.python_version(), platform.platform(terse=True))
    row("PostgreSQL", pg["server_version"].split()[0])
    row(
        "  synchronous_commit",
        pg["synchronous_commit"],
        f"fsync={pg['fsync']}, wal_sync_method={pg['wal_sync_method']}",
    )
    row("  autovacuum", pg["autovacuum"], "the default is on; see below when off")
    if pg["autovacuum"] != "on":
        say(
            "  WARNING: autovacuum is off: the tables are never analyzed, so statements\n"
            "  prepared while they were empty keep scanning them, and the outbox's dead\n"
            "  rows pile up: long runs (--rss-steps) slow down as the database grows."
        )
    row("RabbitMQ", rabbit)
    row("  step queues", f"durable {queue_type}", "x-queue-type from autostep.topology")
    row("  step messages", "persistent", "delivery_mode=2, mandatory, publisher confirms")
    row("database and vhost", plat.name)
    if plat.code != ROOT:
        row("autostep code under test", str(plat.code))
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "postgres": pg,
        "rabbitmq": rabbit,
        "step_queue_type": queue_type,
        "code": str(plat.code),
    }


def _baselines(plat: Platform) -> dict[str, Any]:
    section("baselines (no autostep process running)")
    out = {}
    for clients, seconds in ((1, 1.5), (4, 3.0)):
        pg = out[f"pg_{clients}"] = baselines.postgres_commits(plat, seconds, clients)
        row(
            f"PostgreSQL 2-insert transaction, {clients} client(s)",
            f"{pg['tx_per_s']:,.0f} tx/s",
            f"median {pg['median_ms']:.2f} ms",
        )
    for queue_type in ("classic", "quorum"):
        pub = out[f"confirm_{queue_type}"] = baselines.confirmed_publishes(plat, 500, queue_type)
        row(
            f"confirmed persistent publish, {queue_type} queue",
            f"{pub['median_ms']:.2f} ms",
            f"{pub['per_s']:,.0f}/s one at a time",
        )
    rpc = out["rpc"] = baselines.nameko_rpc(plat, 200)
    row(
        "nameko RPC round trip (ClusterRpcClient)",
        f"{rpc['median_ms']:.2f} ms",
        f"{rpc['per_s']:,.0f}/s one at a time",
    )
    return out


def start_autostep(plat: Platform, client_factory: Any) -> Client:
    """Start ``runner1`` and ``relay``; the client, once a 1-step run has succeeded."""
    section("start 1 function runner and 1 relay")
    plat.spawn_autostep("runner1", *RUNNER_ARGS)
    plat.spawn_autostep("relay", "relay")
    t0 = time.perf_counter()
    client: Client = client_factory(plat)
    client.publish(chain("warmup", 1, n=1))
    baselines.wait_until(
        lambda: client.wait_one(client.start("warmup")[0], 30) == "succeeded",
        120,
        plat,
        "runner and relay",
    )
    row("ready: a 1-step warm-up run succeeded after", f"{time.perf_counter() - t0:.2f} s")
    listing = rabbitmqctl(
        "list_queues", "-p", plat.name, "--quiet", "name", "type", "durable", check=False
    )
    for line in sorted(listing.splitlines()):
        if line.startswith("autostep.fn.fibo"):
            name, kind, durable = line.split()[:3]
            row(f"  queue {name}", kind, f"durable={durable}")
    return client


class _Profiler:
    """py-spy recordings (collapsed stacks, ``--format raw``) of the relay and runner1."""

    def __init__(self, plat: Platform, directory: Path | None) -> None:
        self.plat, self.directory = plat, directory
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, tag: str) -> None:
        if self.directory is None:
            return
        pyspy = Path(sys.executable).parent / "py-spy"
        if not pyspy.exists():
            raise SystemExit("bench: --profile needs py-spy: .venv/bin/pip install py-spy")
        self.directory.mkdir(parents=True, exist_ok=True)
        extra = os.environ.get("BENCH_PYSPY_ARGS", "--nonblocking").split()
        for name in ("relay", "runner1"):
            out = self.directory / f"{tag}-{name}.txt"
            pid = str(self.plat.procs[name].pid)
            self.procs.append(
                subprocess.Popen(
                    [
                        str(pyspy),
                        "record",
                        "--pid",
                        pid,
                        "--rate",
                        "250",
                        "--format",
                        "raw",
                        "--output",
                        str(out),
                        *extra,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(0.5)

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


def _benchmarks(plat: Platform, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    client = start_autostep(plat, Client)
    warm = {name: rss_kib(plat.procs[name].pid) for name in ("runner1", "relay")}
    counter = Runner1Steps(client)
    profiler = _Profiler(plat, args.profile)
    try:
        section(f"A: latency, {args.linear_steps}-step linear fibo(10), one run at a time")
        profiler.start("A")
        results["A"] = latency(client, args.linear_steps, args.linear_runs, args.traced_runs)
        profiler.stop()

        if args.idle_starts:
            section("idle starts: one run at a time, each after 1-3 s with nothing to do")
            results["idle"] = idle_starts(client, args.idle_starts)

        section(f"B: throughput, {args.jobs} runs x {args.job_steps} steps at once, 1 runner")
        profiler.start("B")
        results["B1"] = throughput(client, args.jobs, args.job_steps, args.batches)
        profiler.stop()

        if not args.no_two_runners:
            scale_to(plat, client, counter, 2, 1)
            section(f"B': throughput, {args.jobs} runs x {args.job_steps} steps, 2 runners")
            results["B2"] = throughput(client, args.jobs, args.job_steps, args.batches)

        if args.scale:
            results["scale"] = scale_matrix(plat, client, counter, args.scale, args)
        if args.rss_steps:
            results["rss"] = rss_soak(plat, client, counter, args.rss_steps, warm, args)
    finally:
        profiler.stop()
        client.close()
    return results


def _summary(results: dict[str, Any], seconds: float) -> None:
    section("summary")
    a, b1 = results["A"]["median_s"], results["B1"]["steps_per_s"]
    row(
        "A: median of a 40-step run",
        f"{a:.3f} s",
        f"target <= {TARGET_LATENCY_S} s: {verdict(a <= TARGET_LATENCY_S)}",
    )
    row(
        "B: throughput, 1 runner",
        f"{b1:,.0f} steps/s",
        f"target >= {TARGET_THROUGHPUT:,.0f}: {verdict(b1 >= TARGET_THROUGHPUT)}",
    )
    _cpu_summary("B: CPU ms per step, 1 runner", results["B1"]["cpu_ms_per_step"])
    if "B2" in results:
        row("B: throughput, 2 runners", f"{results['B2']['steps_per_s']:,.0f} steps/s")
        _cpu_summary("B: CPU ms per step, 2 runners", results["B2"]["cpu_ms_per_step"])
    base = results.get("baselines")
    if base:
        row(
            "baselines of this run",
            f"PostgreSQL 2-insert txn {base['pg_4']['tx_per_s']:,.0f}/s (4 clients)",
            f"confirmed publish (quorum) {base['confirm_quorum']['median_ms']:.2f} ms",
        )
    if "rss" in results:
        rss_summary(results["rss"])
    row("bench wall time", f"{seconds:.0f} s")
    if "scale" in results:
        section("scale-out: B by runners x relays (CPU ms per step, cores busy)")
        print_matrix(results["scale"])


def _cpu_summary(label: str, ms: dict[str, float]) -> None:
    total = ms["total"]
    row(
        label,
        f"{total:.2f} ms",
        f"target <= {TARGET_CPU_MS_PER_STEP} ms: {verdict(total <= TARGET_CPU_MS_PER_STEP)}",
    )
    parts = {
        "runners": sum(v for k, v in ms.items() if k.startswith("runner")),
        "relay": ms.get("relay", 0.0),
        "PostgreSQL": ms["pg bench db"] + ms["pg other"],
        "RabbitMQ": ms["rabbitmq"],
    }
    row("  of which", ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    quiet_imports()
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    try:
        with bench_platform(code=args.code.resolve(), keep_logs=args.keep_logs) as plat:
            results["setup"] = _header(plat)
            if not args.no_baselines:
                results["baselines"] = _baselines(plat)
            results.update(_benchmarks(plat, args))
    except KeyboardInterrupt:
        say("\ninterrupted; the bench database, vhost and processes are gone")
        return 130
    _summary(results, time.perf_counter() - t0)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
