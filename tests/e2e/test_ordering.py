"""Per-job order: a job's messages reach consumers in the order they committed.

The README promises that the events of one job are published in the order
their transactions committed, whatever the number of relays, and that step
messages keep their causal order. This test gives that promise every chance to break:

- transactions of one job commit at the same time: a fan-out whose children
  finish together, with the running mark at 20 ms so that marks of slow
  children interleave with completions of fast ones;
- two relay processes with a batch of one row, so that each pass publishes
  a single row and two relays that both published rows of one job would
  interleave them;
- one relay is SIGKILLed mid-run and the other must take its shards over.

A tap queue bound to every event and every step message of the workflow sees
what a consumer sees. For each job, the first arrival of each message the
relays published must come in ``seq`` order (the relay sends each row's
``seq`` as the ``x-autostep-seq`` header; a message published again after
the kill may arrive twice), and the versions of each job and process must
only grow. The step message of ``last`` is published by the runner that
committed the join, right after its commit (it carries no ``seq``), or that
runner runs it itself, unpublished: if it arrives, it arrives once, after
every child's step message.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from autostep.catalog import create_project, publish_workflow
from autostep.db import unit_of_work
from autostep.outbox import SHARDS
from autostep.queries import wait_for_job
from autostep.relay import SHARD_LOCK
from autostep.runs import start_job
from autostep.settings import libpq_dsn
from autostep.topology import EVENTS_EXCHANGE, STEPS_EXCHANGE
from tests.e2e.conftest import (
    RUNNER_MODULES,
    ManagedProcess,
    relay_holds_membership,
    runner_connected,
)
from tests.helpers import Tap

pytestmark = pytest.mark.e2e

JOBS = 24
ITEMS = 8
RELAY_ENV = {"AUTOSTEP_RELAY_BATCH_SIZE": "1", "AUTOSTEP_RELAY_REBALANCE_SECONDS": "0.3"}
WORKFLOW: dict[str, Any] = {
    "name": "order",
    "steps": [
        {
            "name": "each",
            "function": "t_item",
            "for_each": "input.items",
            "input": {"sleep": "item"},
            "next": [{"to": "last"}],
        },
        {"name": "last", "function": "t_add", "input": {"value": "size(prev.items)"}},
    ],
}
SHARDS_HELD = """
    SELECT a.application_name, count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    GROUP BY a.application_name
"""


@pytest.fixture
def tap(amqp_uri: str) -> Iterator[Tap]:
    consumer = Tap(
        amqp_uri, [(EVENTS_EXCHANGE, "#"), (STEPS_EXCHANGE, "t_item"), (STEPS_EXCHANGE, "t_add")]
    )
    yield consumer
    consumer.close()


def _shards_held(database_url: str) -> dict[str, int]:
    """Shards held, by the ``application_name`` (process incarnation) holding them."""
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as conn:
        return {name: count for name, count in conn.execute(SHARDS_HELD, (SHARD_LOCK,))}


def _outbox_rows(database_url: str, jobs: list[uuid.UUID]) -> int:
    """Outbox rows of ``jobs`` (their events, their step messages) not published yet."""
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM outbox WHERE aggregate_id = ANY(%(jobs)s)"
            " OR payload ->> 'job_id' = ANY(%(ids)s)",
            {"jobs": jobs, "ids": [str(job) for job in jobs]},
        ).fetchone()
    return int(found[0]) if found else 0


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.timeout(180)
def test_a_jobs_messages_arrive_in_commit_order_across_concurrent_commits_and_a_takeover(
    autostep_process: Callable[..., ManagedProcess],
    database_url: str,
    session_factory: Any,
    effect_table: None,
    tap: Tap,
) -> None:
    autostep_process(
        "runner",
        "functions",
        "run",
        *RUNNER_MODULES,
        env={"AUTOSTEP_RUNNING_MARK_SECONDS": "0.02"},
        ready=runner_connected,
    )
    ready = relay_holds_membership(database_url)
    first = autostep_process("relay-a", "relay", env=RELAY_ENV, ready=ready)
    second = autostep_process("relay-b", "relay", env=RELAY_ENV, ready=ready)
    split = _wait_until(
        lambda: (
            (held := _shards_held(database_url)).get(first.incarnation, 0) > 0
            and held.get(second.incarnation, 0) > 0
            and sum(held.values()) == SHARDS
        ),
        timeout=10,
    )
    assert split, f"the relays did not split the shards: {_shards_held(database_url)}"

    project = f"order-{uuid.uuid4().hex[:8]}"
    rng = random.Random()
    with unit_of_work(session_factory) as session:
        create_project(session, project)
        publish_workflow(session, project, WORKFLOW)
    jobs = []
    for batch in range(4):
        with unit_of_work(session_factory) as session:
            for _ in range(JOBS // 4):
                items = [round(rng.uniform(0.0, 0.06), 3) for _ in range(ITEMS)]
                jobs.append(start_job(session, project, "order", {"items": items}).id)
        if batch == 2:
            time.sleep(0.3)  # both relays are busy with the first jobs' rows
            first.kill()
        time.sleep(0.2)
    took_over = _wait_until(
        lambda: _shards_held(database_url).get(second.incarnation, 0) == SHARDS, timeout=10
    )
    assert took_over, f"relay-b did not take relay-a's shards: {_shards_held(database_url)}"
    views = [wait_for_job(session_factory, job, timeout=90) for job in jobs]

    failed = [(view["id"], view["error"]) for view in views if view["status"] != "succeeded"]
    assert not failed, failed
    # the relays publish events within their poll: wait until none is left to publish
    drained = _wait_until(lambda: _outbox_rows(database_url, jobs) == 0, timeout=10)
    assert drained, "the relays did not publish every row"
    time.sleep(0.2)  # ...and the tap has them
    arrivals: dict[str, list[int]] = {}
    steps: dict[str, list[str]] = {}
    versions: dict[str, list[int]] = {}
    seen: set[str] = set()
    for message in tap.messages():
        message_id = message.properties["message_id"]
        if message_id in seen:
            continue  # published again after the kill: consumers' inboxes absorb it
        seen.add(message_id)
        body = json.loads(message.body)
        if message.properties["type"] == "step":
            job = body["job_id"]
            steps.setdefault(job, []).append(body["step"])
        else:  # a transaction's events
            first = body[0]["payload"]
            job = first.get("job_id") or first["id"]
            for event in body:
                versions.setdefault(event["id"], []).append(event["payload"]["version"])
        if "x-autostep-seq" in message.headers:  # published by a relay
            arrivals.setdefault(job, []).append(message.headers["x-autostep-seq"])
    for job in map(str, jobs):
        seqs = arrivals[job]
        # the start, each item's completion, the join: a message of events each
        assert len(seqs) >= 2 + ITEMS
        assert seqs == sorted(seqs), f"job {job} arrived out of commit order: {seqs}"
        # ``last`` may run in the runner that joined, straight from its row, unpublished
        assert steps[job] in (["each"] * ITEMS, ["each"] * ITEMS + ["last"]), (
            f"job {job}'s steps: {steps[job]}"
        )
    for row, row_versions in versions.items():
        assert row_versions == sorted(row_versions), f"{row} went back: {row_versions}"
