"""What a reconciliation of the Kubernetes scheduler costs: API calls and seconds.

    .venv/bin/python bench/reconcile.py                 # 10,000 cron triggers
    .venv/bin/python bench/reconcile.py --targets 2000

Against the fake API server of the tests (kmock in a thread of this process,
with the fields a real server adds), with the real ``kubernetes`` client:

1. every target from an empty namespace (one create each);
2. an unchanged resync (target: 1 list call, 0 writes);
3. 100 changed targets (target: 100 writes, nothing else but the list).

Beside them, baselines measured in the same run against the same server: one
bare list call of every CronJob, and 100 bare merge patches, so the seconds
of the reconciliations can be read as multiples of what the server itself
costs. Needs neither PostgreSQL nor RabbitMQ.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autostep.scheduler.cronjobs import MANAGED_SELECTOR, CronTarget, desired_cronjob
from autostep.scheduler.kube import KubeClient
from autostep.scheduler.reconcile import Summary, reconcile
from autostep.settings import Settings
from tests.kube_fake import FakeApiServer

NAMESPACE = "bench"
CHANGES = 100


def _targets(count: int) -> list[CronTarget]:
    return [
        CronTarget(
            id=uuid.uuid4(),
            project_id=uuid.uuid4(),
            workflow_id=uuid.uuid4(),
            name=f"trigger-{i}",
            schedule=f"{i % 60} * * * *",
            time_zone="UTC",
            concurrency="forbid",
            starting_deadline_seconds=60,
            enabled=True,
            version=1,
        )
        for i in range(count)
    ]


def _row(label: str, calls: dict[str, int], seconds: float, target: str = "") -> None:
    shown = ", ".join(f"{verb} {n}" for verb, n in sorted(calls.items())) or "none"
    print(f"  {label:34} {shown:34} {seconds:8.2f} s  {target}")


def _measure(
    client: KubeClient, label: str, targets: list[CronTarget], settings: Settings, target: str
) -> Summary:
    client.calls.clear()
    started = time.perf_counter()
    summary = reconcile(client, [desired_cronjob(t, settings) for t in targets], NAMESPACE)
    _row(label, dict(client.calls), time.perf_counter() - started, target)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = Settings(image="autostep:bench")
    targets = _targets(args.targets)

    with FakeApiServer() as server:
        client = KubeClient.connect(host=server.url)
        print(f"reconcile: {args.targets} cron triggers, fake API server at {server.url}")
        _measure(client, f"1. {args.targets} from empty", targets, settings, "")
        _measure(client, "2. unchanged resync", targets, settings, "target: list 1, no write")
        changed = list(targets)
        for i in range(0, len(changed), max(1, len(changed) // CHANGES))[:CHANGES]:
            changed[i] = replace(changed[i], schedule="*/7 * * * *", version=2)
        _measure(client, f"3. {CHANGES} changed", changed, settings, f"target: patch {CHANGES}")

        print("baselines, same server:")
        bare = KubeClient.connect(host=server.url)
        started = time.perf_counter()
        listed = bare.list_managed(NAMESPACE, MANAGED_SELECTOR)
        _row(f"bare list ({len(listed)} CronJobs)", dict(bare.calls), time.perf_counter() - started)
        bare.calls.clear()
        started = time.perf_counter()
        for item in listed[:CHANGES]:
            bare.merge_patch(NAMESPACE, item["metadata"]["name"], {"spec": {"suspend": False}})
        _row(f"{CHANGES} bare merge patches", dict(bare.calls), time.perf_counter() - started)
        bare.close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
