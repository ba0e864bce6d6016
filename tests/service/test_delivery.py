"""Exactly-once effects under redelivery, and the relay's ordering guarantee."""

from __future__ import annotations

import json
import uuid
from typing import Any

import amqp
import eventlet
import pytest
from sqlalchemy import create_engine, func, select, text

from autostep.catalog import publish_workflow
from autostep.db import make_session_factory, unit_of_work
from autostep.functions.deadletters import death_reason, handle_dead_letter
from autostep.functions.runner import StepOutcome, run_step
from autostep.models import Inbox, Outbox, Process
from autostep.outbox import SHARDS
from autostep.queries import job_view
from autostep.relay import Relay
from autostep.runs import start_job
from autostep.sdk import REGISTRY
from autostep.settings import Settings, amqp_params
from autostep.topology import DEAD_QUEUE, EVENTS_EXCHANGE, STEPS_EXCHANGE, declare_base
from tests.helpers import effects_by_step, outbox_events

CHAIN = {
    "name": "pair",
    "steps": [
        {"name": "one", "function": "t_add", "next": [{"to": "two"}]},
        {"name": "two", "function": "t_add"},
    ],
}


def _start(session_factory: Any, project: str) -> uuid.UUID:
    with unit_of_work(session_factory) as session:
        publish_workflow(session, project, CHAIN)
        return start_job(session, project, "pair", {"value": 1}).id


def _step_rows(session_factory: Any, job_id: uuid.UUID) -> list[Outbox]:
    with unit_of_work(session_factory) as session:
        process_ids = select(Process.id).where(Process.job_id == job_id)
        return list(
            session.scalars(
                select(Outbox).where(Outbox.type == "step", Outbox.aggregate_id.in_(process_ids))
            )
        )


def _unpublished(session_factory: Any, jobs: list[uuid.UUID]) -> int:
    """Outbox rows of ``jobs`` and their processes not published yet."""
    with unit_of_work(session_factory) as session:
        processes = select(Process.id).where(Process.job_id.in_(jobs))
        return int(
            session.scalar(
                select(func.count()).where(
                    Outbox.aggregate_id.in_(jobs) | Outbox.aggregate_id.in_(processes)
                )
            )
            or 0
        )


def test_a_redelivered_step_message_is_a_no_op(
    session_factory: Any, project: str, effect_table: None
) -> None:
    import tests.stepfuncs  # noqa: F401  (registers t_add)

    job_id = _start(session_factory, project)
    (row,) = _step_rows(session_factory, job_id)
    spec = REGISTRY["t_add"]

    first = run_step(session_factory, spec, row.payload, str(row.id), consumer="fn_t_add")
    again = run_step(session_factory, spec, row.payload, str(row.id), consumer="fn_t_add")

    assert first is StepOutcome.SUCCEEDED
    assert again is StepOutcome.SKIPPED
    with unit_of_work(session_factory) as session:
        steps = session.scalars(select(Process.step).where(Process.job_id == job_id)).all()
        effects = session.scalar(
            text(
                "SELECT count(*) FROM test_effect e JOIN process p ON p.id = e.process_id"
                " WHERE p.job_id = :j"
            ),
            {"j": job_id},
        )
        inbox = session.scalar(select(func.count()).where(Inbox.message_id == row.id))
    assert sorted(steps) == ["one", "two"]  # the duplicate queued no second "two"
    assert effects == 1
    assert inbox == 1


def test_a_message_published_twice_through_rabbitmq_takes_effect_once(
    session_factory: Any,
    project: str,
    amqp_uri: str,
    functions: Any,
    relay: Relay,
    wait_for_job: Any,
) -> None:
    # Publish the first step's message ourselves, twice, as a relay that
    # crashed between publishing and deleting would; then let the relay run.
    relay.stop()
    job_id = _start(session_factory, project)
    (row,) = _step_rows(session_factory, job_id)
    conn = amqp.Connection(**amqp_params(amqp_uri))
    conn.connect()
    channel = conn.channel()
    declare_base(channel)
    for _ in range(2):
        channel.basic_publish(
            amqp.Message(
                json.dumps(row.payload),
                message_id=str(row.id),
                delivery_mode=2,
                content_type="application/json",
            ),
            exchange=STEPS_EXCHANGE,
            routing_key="t_add",
        )
    conn.close()
    second = Relay()
    thread = eventlet.spawn(second.run)  # and the relay publishes the row a third time
    try:
        view = wait_for_job(job_id)
    finally:
        second.stop()
        thread.wait()

    assert view["status"] == "succeeded"
    assert view["output"] == {"value": 3}
    assert [p["step"] for p in view["processes"]] == ["one", "two"]
    assert effects_by_step(session_factory, job_id) == [("one", 1), ("two", 1)]


def test_events_of_a_job_arrive_in_commit_order_with_two_relays(
    session_factory: Any, project: str, amqp_uri: str, functions: Any, wait_for_job: Any
) -> None:
    conn = amqp.Connection(**amqp_params(amqp_uri))
    conn.connect()
    channel = conn.channel()
    declare_base(channel)
    queue, _, _ = channel.queue_declare("", exclusive=True)
    channel.queue_bind(queue, EVENTS_EXCHANGE, "#")
    relays = [Relay(Settings(relay_rebalance_seconds=0.2)) for _ in range(2)]
    threads = [eventlet.spawn(r.run) for r in relays]
    try:
        # both see two members after a rebalance or two and split the shards
        for _ in range(100):
            first, second = relays[0].shards, relays[1].shards
            if first and second and len(first) + len(second) == SHARDS:
                break
            eventlet.sleep(0.05)
        assert relays[0].shards and relays[1].shards
        assert not relays[0].shards & relays[1].shards
        jobs = []
        with unit_of_work(session_factory) as session:
            publish_workflow(session, project, CHAIN)
        for _ in range(20):
            with unit_of_work(session_factory) as session:
                jobs.append(start_job(session, project, "pair", {"value": 1}).id)
        for job_id in jobs:
            assert wait_for_job(job_id)["status"] == "succeeded"
        with eventlet.Timeout(10, AssertionError("the last events were not published")):
            while _unpublished(session_factory, jobs):
                eventlet.sleep(0.05)
    finally:
        for r in relays:
            r.stop()
        for t in threads:
            t.wait()

    received: dict[str, list[int]] = {}
    events: dict[str, list[str]] = {}
    versions: dict[str, list[int]] = {}
    while (message := channel.basic_get(queue, no_ack=True)) is not None:
        transaction = json.loads(message.body)  # one message per transaction: its events
        first = transaction[0]["payload"]
        job = first.get("job_id", first["id"])
        received.setdefault(job, []).append(message.headers["x-autostep-seq"])
        for event in transaction:
            events.setdefault(job, []).append(event["type"])
            versions.setdefault(event["id"], []).append(event["payload"]["version"])
    conn.close()
    assert {str(j) for j in jobs} <= set(received)
    for job in jobs:
        seqs = received[str(job)]
        assert seqs == sorted(seqs), f"events of job {job} out of order: {seqs}"
        assert len(seqs) == 3  # the start's transaction, then each step's
        # job.updated twice, and per (fast) step: queued, succeeded
        assert sorted(events[str(job)]) == ["job.updated"] * 2 + ["process.updated"] * 4
    for process_versions in versions.values():
        assert process_versions == sorted(process_versions)
    assert relays[0].published > 0 and relays[1].published > 0


def test_messages_a_runner_cannot_use_are_dead_lettered_and_logged(
    amqp_uri: str, functions: Any, caplog: Any
) -> None:
    conn = amqp.Connection(**amqp_params(amqp_uri))
    conn.connect()
    channel = conn.channel()
    declare_base(channel)
    unknown_process = {
        "process_id": str(uuid.uuid4()),
        "job_id": str(uuid.uuid4()),
        "step": "s",
        "function": "t_add",
        "attempt": 1,
        "input": {},
    }
    for body in ({"not": "a step"}, unknown_process):
        channel.basic_publish(
            amqp.Message(
                json.dumps(body),
                message_id=str(uuid.uuid4()),
                content_type="application/json",
                delivery_mode=2,
            ),
            exchange=STEPS_EXCHANGE,
            routing_key="t_add",
        )
    for _ in range(100):
        logged = [
            r.getMessage() for r in caplog.records if r.name == "autostep.functions.deadletters"
        ]
        if len(logged) == 2:
            break
        eventlet.sleep(0.05)
    _, ready, _ = channel.queue_declare(DEAD_QUEUE, passive=True)
    conn.close()
    assert any("no step message" in m and '"not": "a step"' in m for m in logged)
    assert any("unknown process" in m and unknown_process["process_id"] in m for m in logged)
    assert ready == 0


def test_a_dead_lettered_step_fails_its_process_and_job_once(
    session_factory: Any, project: str
) -> None:
    job_id = _start(session_factory, project)
    (row,) = _step_rows(session_factory, job_id)
    reason = death_reason(
        {"x-death": [{"reason": "delivery_limit", "queue": "autostep.fn.t_add", "count": 10}]}
    )

    assert handle_dead_letter(session_factory, row.payload, str(row.id), reason)
    assert handle_dead_letter(session_factory, row.payload, str(row.id), reason)  # no-op

    with unit_of_work(session_factory) as session:
        view = job_view(session, job_id)
        events = len(outbox_events(session, "job.updated", job_id))
    assert view["status"] == "failed"
    assert view["processes"][0]["status"] == "failed"
    # RabbitMQ 3.10 drops x-delivery-count from a dead letter: the limit (10) plus one
    assert "dead-lettered: delivery_limit on autostep.fn.t_add after 11 deliveries" in view["error"]
    assert events == 2  # started, failed: the second call changed nothing


def test_the_death_reason_counts_deliveries() -> None:
    death = {"reason": "delivery_limit", "queue": "autostep.fn.t_add", "count": 1}
    kept = {"x-death": [death], "x-delivery-count": 10}  # a broker that keeps the header
    rejected = {"x-death": [{**death, "reason": "rejected"}]}

    assert death_reason(kept) == "delivery_limit on autostep.fn.t_add after 11 deliveries"
    assert death_reason(rejected) == "rejected on autostep.fn.t_add"
    assert death_reason({}) == "rejected"


def test_the_relay_prunes_inbox_rows_past_retention(session_factory: Any) -> None:
    old, fresh = uuid.uuid4(), uuid.uuid4()
    with unit_of_work(session_factory) as session:
        session.execute(
            text(
                "INSERT INTO inbox (consumer, message_id, received_at) VALUES"
                " ('prune', :old, now() - interval '8 days'), ('prune', :fresh, now())"
            ),
            {"old": old, "fresh": fresh},
        )
    pruner = Relay()
    pruner.connect()
    try:
        assert pruner.prune_inbox() >= 1
    finally:
        pruner.close()
    with unit_of_work(session_factory) as session:
        left = session.scalars(select(Inbox.message_id).where(Inbox.consumer == "prune")).all()
    assert left == [fresh]


@pytest.mark.timeout(25)
def test_running_marks_never_wait_on_a_full_pool(
    session_factory: Any, project: str, database_url: str
) -> None:
    # Two slow steps share a one-connection pool: while the first holds the
    # connection, its running mark must not need one from the same pool (it
    # would wait for the step, which waits for its mark, until the pool's
    # 30 s checkout timeout).
    import autostep.functions.builtins  # noqa: F401  (registers delay)

    with unit_of_work(session_factory) as session:
        publish_workflow(
            session, project, {"name": "nap", "steps": [{"name": "nap", "function": "delay"}]}
        )
        jobs = [start_job(session, project, "nap", {"seconds": 0.8}).id for _ in range(2)]
    rows = [row for job in jobs for row in _step_rows(session_factory, job)]
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    tiny = make_session_factory(engine)
    spec = REGISTRY["delay"]

    try:
        threads = [
            eventlet.spawn(run_step, tiny, spec, row.payload, str(row.id), consumer="fn_delay")
            for row in rows
        ]
        outcomes = [thread.wait() for thread in threads]
    finally:
        engine.dispose()

    assert outcomes == [StepOutcome.SUCCEEDED, StepOutcome.SUCCEEDED]
    with unit_of_work(session_factory) as session:
        versions = session.scalars(select(Process.version).where(Process.job_id.in_(jobs))).all()
    assert versions == [3, 3]  # queued, running (the mark), succeeded
