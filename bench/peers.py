"""autostep beside Celery: the same chain and burst of ``fibo(10)``, one RabbitMQ, one run.

Run from the repository root (see ``bench/README.md``)::

    .venv/bin/python bench/peers.py [--rounds 3] [--no-durable-celery] [--json FILE]

Celery is not a dependency of autostep: the first run makes a virtual
environment of its own, ``bench/.peers-venv``, with a pinned Celery, and
later runs reuse it. Celery's side (``bench/peers_celery.py``) runs there:
one worker ``-P prefork --concurrency 2`` per setup, on a RabbitMQ vhost of
its own, and a load driver. autostep's side is ``bench/run.py``'s: one
runner, one relay, benchmarks A and B of :mod:`bench.workload`.

In each round, their order turning from one round to the next:

- chain: a 40-step chain of ``fibo(10)``, one warm-up then 5 runs one after
  another, the median (autostep: A; Celery: a ``celery.chain`` from submit
  to its last result);
- burst: 100 chains of 10 steps submitted together, steps per second from
  the first submit to the last completion (autostep: B);

for autostep, Celery with its defaults, and (unless ``--no-durable-celery``)
Celery with a quorum queue, publisher confirms and ``acks_late``. Targets:
autostep's chain at most 0.4 times Celery's, autostep's steps/s at least
Celery's. Everything it started is removed at the end, also on Ctrl-C or an
error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path[0] == str(ROOT / "bench"):
    sys.path[0] = str(ROOT)  # import bench.* as a package; keep bench/ off the path

from bench.report import median, row, say, section, verdict  # noqa: E402
from bench.resources import (  # noqa: E402
    CpuMeter,
    Platform,
    amqp_vhost,
    bench_platform,
    cpu_per_step,
    quiet_imports,
    rabbitmqctl,
)
from bench.run import start_autostep  # noqa: E402
from bench.workload import Client, latency, throughput  # noqa: E402

VENV = ROOT / "bench" / ".peers-venv"
#: The Celery the comparison runs against (the newest 5.x when this was written).
CELERY_REQUIREMENT = "celery==5.7.0"
#: autostep's chain at most this share of Celery's.
TARGET_CHAIN_RATIO = 0.4
#: autostep's burst steps/s at least this share of Celery's.
TARGET_BURST_RATIO = 1.0
AUTOSTEP = "autostep"
CELERY = "Celery"
CELERY_DURABLE = "Celery durable"
#: The Celery worker's name among a setup's processes (and its CPU group).
WORKER = "celery worker"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--linear-steps", type=int, default=40, help="chain: steps (40)")
    parser.add_argument("--linear-runs", type=int, default=5, help="chain: measured runs (5)")
    parser.add_argument("--jobs", type=int, default=100, help="burst: chains at once (100)")
    parser.add_argument("--job-steps", type=int, default=10, help="burst: steps per chain (10)")
    parser.add_argument("--batches", type=int, default=4, help="burst: autostep start txns (4)")
    parser.add_argument("--concurrency", type=int, default=2, help="Celery prefork workers (2)")
    parser.add_argument(
        "--no-durable-celery", action="store_true", help="skip Celery with quorum and confirms"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    return parser.parse_args(argv)


# -- the Celery environment -------------------------------------------------------


def _venv_python() -> Path:
    """``bench/.peers-venv``'s Python with :data:`CELERY_REQUIREMENT`, made if need be."""
    python = VENV / "bin" / "python"
    wanted = CELERY_REQUIREMENT.split("==")[1]
    if python.exists():
        found = subprocess.run(
            [str(python), "-c", "import celery; print(celery.__version__)"],
            capture_output=True,
            text=True,
        )
        if found.returncode == 0 and found.stdout.strip() == wanted:
            return python
    section(f"making {VENV.relative_to(ROOT)} with {CELERY_REQUIREMENT} (once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, CELERY_REQUIREMENT], check=True)
    return python


def _peers_celery(python: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    """``python -m bench.peers_celery ARGS``: what it printed, as JSON."""
    done = subprocess.run(
        [str(python), "-m", "bench.peers_celery", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"bench.peers_celery {' '.join(args)} exited with {done.returncode}:\n"
            f"{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def _facts(python: Path, durable: bool) -> dict[str, Any]:
    """Celery's versions and the settings of one setup, as Celery resolves them."""
    env = {**os.environ, "PEERS_DURABLE": "1" if durable else "0"}
    return {**_peers_celery(python, env, "versions"), **_peers_celery(python, env, "config")}


class CeleryDriver:
    """Runs ``bench/peers_celery.py``'s load driver against one Celery setup."""

    def __init__(self, python: Path, plat: Platform, env: dict[str, str]) -> None:
        self.python, self.plat, self.env = python, plat, env

    def __call__(self, *args: str) -> dict[str, Any]:
        try:
            return _peers_celery(self.python, {**self.plat.env(), **self.env}, *args)
        except RuntimeError as exc:
            self.plat.check_alive()
            raise RuntimeError(f"{exc}\n--- worker ---\n{self.plat.tail(WORKER)}") from exc


@contextlib.contextmanager
def celery_setup(
    python: Path, autostep: Platform, *, durable: bool, concurrency: int
) -> Iterator[CeleryDriver]:
    """A vhost and a running prefork worker; its driver. Both gone on the way out."""
    name = f"autostep_peers_{uuid.uuid4().hex[:10]}"
    with amqp_vhost(name) as uri:
        logs = autostep.logs / name  # removed with the autostep platform's logs
        logs.mkdir()
        plat = Platform(name, autostep.database_url, uri, logs)
        env = {"PEERS_BROKER_URL": uri, "PEERS_DURABLE": "1" if durable else "0"}
        try:
            plat.spawn(
                WORKER,
                *("-m", "celery", "-A", "bench.peers_celery", "worker"),
                *("-P", "prefork", "--concurrency", str(concurrency), "--loglevel", "warning"),
                *("--hostname", f"{'durable' if durable else 'default'}@%h"),
                program=str(python),
                env=env,
            )
            driver = CeleryDriver(python, plat, env)
            driver("ping", "--timeout", "120")  # the worker consumes
            queue = _queue(name, "celery")
            row(
                f"{CELERY_DURABLE if durable else CELERY} worker ready",
                f"queue {queue['type']}",
                f"durable={queue['durable']}, vhost {name}",
            )
            yield driver
        finally:
            plat.stop(WORKER)


def _queue(vhost: str, name: str) -> dict[str, str]:
    """The type and durability of queue ``name``, as RabbitMQ reports them."""
    listing = rabbitmqctl("list_queues", "-p", vhost, "--quiet", "name", "type", "durable")
    for line in listing.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return {"type": fields[1], "durable": fields[2]}
    return {"type": "?", "durable": "?"}


# -- the two sides ------------------------------------------------------------------


def _autostep_round(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    section(f"autostep: chain of {args.linear_steps} fibo(10), 1 runner, 1 relay")
    a = latency(client, args.linear_steps, args.linear_runs, traced_runs=0)
    section(f"autostep: burst of {args.jobs} x {args.job_steps} steps, 1 runner, 1 relay")
    b = throughput(client, args.jobs, args.job_steps, args.batches)
    return {
        "chain_s": a["median_s"],
        "chain_runs_s": a["runs_s"],
        "steps_per_s": b["steps_per_s"],
        "cpu_ms_per_step": b["cpu_ms_per_step"]["total"],
        "failed": b["failed"],
    }


def _celery_round(
    label: str, driver: CeleryDriver, args: argparse.Namespace, expected: dict[str, int]
) -> dict[str, Any]:
    section(f"{label}: chain of {args.linear_steps} fibo(10), prefork x {args.concurrency}")
    chain = driver("chain", "--steps", str(args.linear_steps), "--runs", str(args.linear_runs))
    row("warm-up run", f"{chain['warmup_s']:.3f} s")
    for index, seconds in enumerate(chain["runs_s"], 1):
        row(f"run {index}", f"{seconds:.3f} s", f"{seconds / args.linear_steps * 1e3:.1f} ms/step")
    chain_s = median(chain["runs_s"])
    row(f"median of {len(chain['runs_s'])} runs", f"{chain_s:.3f} s")
    _same_value(label, chain["value"], expected)

    section(f"{label}: burst of {args.jobs} x {args.job_steps} steps, prefork x {args.concurrency}")
    meter = CpuMeter(driver.plat)
    burst = driver("burst", "--chains", str(args.jobs), "--steps", str(args.job_steps))
    # Celery's side uses no PostgreSQL: its total is the worker's and RabbitMQ's.
    cpu = cpu_per_step(meter.report(), burst["steps"], [WORKER], servers=("rabbitmq",))
    _same_value(label, burst["value"], expected)
    driver_ms = burst["driver_cpu_s"] * 1000 / burst["steps"]
    say(f"    the Celery client (submits, receives every result): {driver_ms:.2f} ms (left out)")
    row(f"submit {args.jobs} chains", f"{burst['submit_s']:.2f} s")
    row("all finished after", f"{burst['elapsed_s']:.2f} s")
    row("throughput", f"{burst['steps_per_s']:,.0f} steps/s")
    return {
        "chain_s": chain_s,
        "chain_runs_s": chain["runs_s"],
        "steps_per_s": burst["steps_per_s"],
        "cpu_ms_per_step": cpu["total"],
        "driver_cpu_ms_per_step": driver_ms,
    }


def _same_value(label: str, got: Any, expected: dict[str, int]) -> None:
    if got != expected:
        raise RuntimeError(f"{label}'s fibo returned {got}, autostep's fibo {expected}")


# -- output -------------------------------------------------------------------------


def _header(plat: Platform, facts: dict[str, dict[str, Any]]) -> None:
    versions = facts[CELERY]
    section("setup")
    row("machine", f"{os.cpu_count()} cores", f"load average {os.getloadavg()[0]:.2f} at start")
    row("python (autostep)", platform.python_version())
    row("python (Celery venv)", versions["python"], str(VENV.relative_to(ROOT)))
    row(
        "Celery",
        versions["celery"],
        f"kombu {versions['kombu']}, amqp {versions['amqp']}, billiard {versions['billiard']}",
    )
    row("RabbitMQ", rabbitmqctl("version", check=False).strip(), "one server for both")
    say()
    say("  durability:")
    say("    autostep: every step committed in PostgreSQL (synchronous_commit as the server")
    say("      says) with its outbox row; durable quorum step queues, persistent messages,")
    say("      publisher confirms, mandatory; the step message acked after the commit")
    for label, conf in facts.items():
        acks = "after the task" if conf["task_acks_late"] else "when the task starts"
        say(
            f"    {label}: queue {conf['queue']!r} of type {conf['queue_type']},"
            f" delivery_mode={conf['task_default_delivery_mode']},"
            f" publisher confirms {'on' if conf['confirm_publish'] else 'off'},"
        )
        say(
            f"      message acked {acks}, prefetch multiplier"
            f" {conf['worker_prefetch_multiplier']}, results {conf['result_backend']}"
            f" ({'persistent' if conf['result_persistent'] else 'transient'} messages)"
        )
    row("autostep database and vhost", plat.name)


def _table(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    sides = list(results)
    rounds = len(results[AUTOSTEP])
    section(f"autostep vs Celery ({rounds} round{'s' if rounds > 1 else ''}, interleaved)")
    say(f"  {'':<44}" + "".join(f"{side:>16}" for side in sides))
    figures = (
        ("chain_s", f"chain of {args.linear_steps}, median s", "{:.3f}"),
        ("steps_per_s", f"burst {args.jobs} x {args.job_steps}, steps/s", "{:,.0f}"),
        ("cpu_ms_per_step", "burst, CPU ms per step", "{:.2f}"),
    )
    summary: dict[str, dict[str, float]] = {side: {} for side in sides}
    for key, label, fmt in figures:
        for index in range(len(results[AUTOSTEP])):
            cells = "".join(f"{fmt.format(results[s][index][key]):>16}" for s in sides)
            say(f"  {label + f', round {index + 1}':<44}" + cells)
        for side in sides:
            summary[side][key] = median([r[key] for r in results[side]])
        cells = "".join(f"{fmt.format(summary[s][key]):>16}" for s in sides)
        say(f"  {label + ', median of rounds':<44}" + cells)
    say("  CPU: autostep's runner, relay, PostgreSQL and RabbitMQ; Celery's worker (with its")
    say("  pool) and RabbitMQ; the load drivers left out.")

    section("targets (medians of the rounds)")
    ours, theirs = summary[AUTOSTEP], summary[CELERY]
    chain_ratio = ours["chain_s"] / theirs["chain_s"]
    burst_ratio = ours["steps_per_s"] / theirs["steps_per_s"]
    row(
        f"chain: autostep / Celery <= {TARGET_CHAIN_RATIO}",
        f"{chain_ratio:.2f}",
        f"{ours['chain_s']:.3f} s / {theirs['chain_s']:.3f} s:"
        f" {verdict(chain_ratio <= TARGET_CHAIN_RATIO)}",
    )
    row(
        f"burst: autostep / Celery >= {TARGET_BURST_RATIO:.1f}",
        f"{burst_ratio:.2f}",
        f"{ours['steps_per_s']:,.0f} / {theirs['steps_per_s']:,.0f} steps/s:"
        f" {verdict(burst_ratio >= TARGET_BURST_RATIO)}",
    )
    if CELERY_DURABLE in summary:
        durable = summary[CELERY_DURABLE]
        row(
            "  beside Celery durable (no target)",
            f"{ours['chain_s'] / durable['chain_s']:.2f}",
            f"chain ratio; burst ratio {ours['steps_per_s'] / durable['steps_per_s']:.2f}",
        )
    return {"medians": summary, "chain_ratio": chain_ratio, "burst_ratio": burst_ratio}


# -- main ---------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> dict[str, Any]:
    python = _venv_python()
    from autostep.functions.builtins import FiboIn, fibo

    expected = fibo(FiboIn(n=10)).model_dump()
    facts = {CELERY: _facts(python, durable=False)}
    if not args.no_durable_celery:
        facts[CELERY_DURABLE] = _facts(python, durable=True)
    out: dict[str, Any] = {"celery": facts}
    with bench_platform(keep_logs=args.keep_logs) as plat, contextlib.ExitStack() as stack:
        _header(plat, facts)
        client = start_autostep(plat, Client)
        stack.callback(client.close)
        section(f"start the Celery workers (-P prefork --concurrency {args.concurrency})")
        drivers = {
            CELERY: stack.enter_context(
                celery_setup(python, plat, durable=False, concurrency=args.concurrency)
            )
        }
        if not args.no_durable_celery:
            drivers[CELERY_DURABLE] = stack.enter_context(
                celery_setup(python, plat, durable=True, concurrency=args.concurrency)
            )
        results: dict[str, list[dict[str, Any]]] = {AUTOSTEP: [], **{k: [] for k in drivers}}
        sides = list(results)
        for index in range(args.rounds):
            turn = sides[index % len(sides) :] + sides[: index % len(sides)]
            for side in turn:
                if side == AUTOSTEP:
                    results[side].append(_autostep_round(client, args))
                else:
                    results[side].append(_celery_round(side, drivers[side], args, expected))
        out["rounds"] = results
        out.update(_table(results, args))
    return out


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    quiet_imports()
    t0 = time.perf_counter()
    try:
        out = _run(args)
    except KeyboardInterrupt:
        say("\ninterrupted; the databases, vhosts and processes are gone")
        return 130
    row("bench wall time", f"{time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
