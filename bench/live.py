"""Commit-to-receipt latency of the gateway's websocket with many subscribers.

``.venv/bin/python bench/live.py [--jobs 100] [--per-job 10] [--per-project 10]``

On a database and vhost of its own (as ``bench/run.py``), starts a relay,
a function runner and a gateway serving ``/ws`` (``autostep gateway run``),
then ``--jobs`` runs of a chain of ``delay`` steps (``--step-seconds``
each, so ``jobs / step-seconds`` steps/s in all), and a load driver process
(``bench/live_driver.py``) with ``--per-job`` clients on each job and
``--per-project`` on the project. Prints p50/p99 of the seconds from a
step's ``finished_at`` (set just before its commit) to the receipt of its
``process.updated``, over every client, in two phases: the burst (steps
that finished while the clients subscribed and their snapshots were read)
and the steady state (after every client had its snapshot); and the
seconds from a subscribe to its snapshot. The baseline, measured first in
the same run on the same flow of steps: one client on the project for
``--baseline-seconds``. A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import say
from bench.resources import Platform, bench_platform, quiet_imports
from bench.workload import Client


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _drive(
    plat: Platform, url: str, seconds: float, topics: list[str]
) -> dict[str, Any] | None:
    """Run the load driver; its figures, or None (and its errors printed) if it failed."""
    driver = subprocess.run(
        [sys.executable, "bench/live_driver.py", url, str(seconds), *topics],
        env=plat.env(),
        capture_output=True,
        text=True,
    )
    plat.check_alive()
    if driver.returncode != 0:
        say(driver.stderr[-2000:])
        return None
    found: dict[str, Any] = json.loads(driver.stdout)
    return found


def _show(label: str, seconds: list[float], note: str = "") -> None:
    if not seconds:
        say(f"  {label:52} no receipts")
        return
    ordered = sorted(seconds)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    figures = f"p50 {p50:6,.0f} ms, p99 {p99:6,.0f} ms ({len(ordered):,})"
    say(f"  {label:52} {figures}{'; ' + note if note else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--per-job", type=int, default=10)
    parser.add_argument("--per-project", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the driver reads")
    parser.add_argument("--baseline-seconds", type=float, default=6.0)
    args = parser.parse_args()
    quiet_imports()
    with bench_platform() as plat:
        plat.spawn_autostep("relay", "relay")
        plat.spawn_autostep("runner", "functions", "run", "autostep.functions.builtins")
        port = _port()
        os.environ["AUTOSTEP_HTTP_PORT"] = str(port)
        plat.spawn_autostep("gateway", "gateway", "run")
        time.sleep(6)
        plat.check_alive()
        client = Client(plat)
        steps = int(args.seconds / args.step_seconds) + 10
        client.publish(
            {
                "name": "slow",
                "max_steps": steps + 1,
                "steps": [
                    {
                        "name": f"s{i}",
                        "function": "delay",
                        "config": {"seconds": args.step_seconds},
                        **({"next": [{"to": f"s{i + 1}"}]} if i + 1 < steps else {}),
                    }
                    for i in range(steps)
                ],
            }
        )
        jobs = client.start("slow", args.jobs)
        from autostep.catalog import get_project
        from autostep.db import unit_of_work

        with unit_of_work(client.factory) as session:
            project_id = get_project(session, client.project).id
        topics = [f"job:{job}:{args.per_job}" for job in jobs]
        topics.append(f"project:{project_id}:{args.per_project}")
        url = f"ws://127.0.0.1:{port}/ws"
        say(
            f"{args.jobs} runs of {steps} delay({args.step_seconds}) steps "
            f"(~{args.jobs / args.step_seconds:.0f} steps/s); "
            f"{args.jobs * args.per_job + args.per_project} clients for {args.seconds:.0f} s"
        )
        baseline = _drive(plat, url, args.baseline_seconds, [f"project:{project_id}:1"])
        found = _drive(plat, url, args.seconds, topics)
        if baseline is None or found is None:
            return 1
        say(
            f"{found['snapshots']} of {found['clients']} clients got their snapshot, "
            f"{found['frames']:,} frames, {found['failed']} failed {found['errors']}"
        )
        _show("baseline: 1 client, commit to receipt", baseline["steady"] + baseline["burst"])
        _show(f"{found['clients']} clients, subscribe to snapshot", found["snapshot_waits"])
        _show("burst: commit to receipt while they subscribe", found["burst"])
        _show("steady: commit to receipt", found["steady"], "target p99 <= 200 ms")
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
