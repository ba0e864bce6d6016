"""Commit-to-receipt latency of the gateway's websocket with many subscribers.

``.venv/bin/python bench/live.py [--jobs 100] [--per-job 10] [--per-project 10]``

On a database and vhost of its own (as ``bench/run.py``), starts a relay,
a function runner and a gateway serving ``/ws`` (``autostep gateway run``),
then ``--jobs`` runs of a chain of ``delay`` steps (``--step-seconds``
each, so ``jobs / step-seconds`` steps/s in all), and a load driver process
(``bench/live_driver.py``) with ``--per-job`` clients on each job and
``--per-project`` on the project. Prints p50/p99 of the seconds from a
step's ``finished_at`` (set just before its commit) to the receipt of its
``process.updated``, over every client. A script, not a test.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import say
from bench.resources import bench_platform, quiet_imports
from bench.workload import Client


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--per-job", type=int, default=10)
    parser.add_argument("--per-project", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the driver reads")
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
        driver = subprocess.run(
            [sys.executable, "bench/live_driver.py", url, str(args.seconds), *topics],
            env=plat.env(),
            capture_output=True,
            text=True,
        )
        plat.check_alive()
        if driver.returncode != 0:
            say(driver.stderr[-2000:])
            return 1
        found = json.loads(driver.stdout)
        measured = {key: sorted(found.pop(key)) for key in ("latencies", "steady")}
        say(json.dumps(found))
        for key, what in (("latencies", "all the run"), ("steady", "once all had subscribed")):
            latencies = measured[key]
            if latencies:
                p50 = latencies[len(latencies) // 2]
                p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
                say(
                    f"commit to receipt, {what}, {len(latencies)} receipts: "
                    f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (target p99 <= 200 ms)"
                )
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
