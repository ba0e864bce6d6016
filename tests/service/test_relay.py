"""The relay's promises about outbox rows, each driven step by step.

A relay pass is three public steps, :meth:`Relay.claim`, :meth:`Relay.publish`
and :meth:`Relay.settle`, so these tests interleave two relays exactly as
the races they guard against would, without sleeping on luck:

- two claims at the same time never take the same row, nor wait for each other;
- a claim's lease keeps its rows from other claimants until it runs out, and
  then another claimant publishes them (a relay that vanished strands nothing);
- a relay whose lease ran out leaves the rows to their new claimant;
- a relay that takes a shard over publishes what the previous owner had
  claimed, at once and in order;
- a row the broker nacks or returns stays in the outbox and is published
  again after a backoff (a returned step message's queue is declared again);
- a relay that loses its database session reconnects and goes on.

The rows are events of a made-up type on ``autostep.events``; a tap queue
bound to that type sees every publication.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import eventlet
import psycopg
import pytest
from sqlalchemy import select

from autostep.db import unit_of_work
from autostep.messages import StepMessage
from autostep.models import Outbox
from autostep.outbox import SHARDS, OutboxWriter
from autostep.relay import MEMBER_LOCK, Claim, Relay
from autostep.settings import Settings, libpq_dsn
from autostep.topology import EVENTS_EXCHANGE, step_queue_name
from tests.helpers import Tap

ROWS = 12


@pytest.fixture
def kind() -> str:
    """An event type of this test alone."""
    return f"test.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tap(amqp_uri: str, kind: str) -> Iterator[Tap]:
    consumer = Tap(amqp_uri, [(EVENTS_EXCHANGE, kind)])
    yield consumer
    consumer.close()


@pytest.fixture
def relays(platform_env: dict[str, str]) -> Iterator[list[Relay]]:
    """Relays the test connects; all are closed at teardown."""
    made: list[Relay] = []
    yield made
    for relay in made:
        relay.close()


def _relay(relays: list[Relay], shard: int | None, **settings: Any) -> Relay:
    """A connected relay; with ``shard``, one that claims that shard whoever owns it.

    Forcing the shard models two relays that both believe they own a shard
    (one lost its session but still works): the claim's own guards must hold.
    """
    relay = Relay(Settings(**settings))
    relay.connect()
    if shard is not None:
        relay.shards = {shard}
    relays.append(relay)
    return relay


def _job_in(shard: int) -> uuid.UUID:
    base = uuid.uuid4().int
    return uuid.UUID(int=base - base % SHARDS + shard)


def _add_rows(session_factory: Any, job_id: uuid.UUID, kind: str, count: int = ROWS) -> list[str]:
    with unit_of_work(session_factory) as session:
        out = OutboxWriter(session, job_id)
        ids = [out.event(kind, job_id, {"n": n}) for n in range(count)]
        out.flush()
    return [str(row_id) for row_id in ids]


def _left(session_factory: Any, ids: list[str]) -> list[str]:
    with unit_of_work(session_factory) as session:
        rows = session.scalars(select(Outbox.id).where(Outbox.id.in_([uuid.UUID(i) for i in ids])))
        return sorted(str(row) for row in rows)


def _ids(claim: Claim, among: list[str]) -> list[str]:
    return [str(row["id"]) for row in claim.rows if str(row["id"]) in among]


def test_a_claim_never_waits_for_nor_takes_rows_another_claim_is_taking(
    session_factory: Any, database_url: str, relays: list[Relay], kind: str
) -> None:
    shard = 7
    ids = _add_rows(session_factory, _job_in(shard), kind)
    taking, rest = ids[: ROWS // 2], ids[ROWS // 2 :]
    relay = _relay(relays, shard, relay_batch_size=ROWS * 10)
    # Another claim is under way: it has locked its rows and not yet committed.
    with psycopg.connect(libpq_dsn(database_url)) as other:
        other.execute("SELECT id FROM outbox WHERE id = ANY(%s::uuid[]) FOR UPDATE", (taking,))
        with eventlet.Timeout(5, AssertionError("the claim waited for another claim's rows")):
            claimed = _ids(relay.claim(), ids)
        other.rollback()

    assert claimed == rest


def test_a_lease_keeps_rows_until_it_runs_out_then_another_relay_publishes_them(
    session_factory: Any, relays: list[Relay], kind: str, tap: Tap
) -> None:
    shard = 11
    ids = _add_rows(session_factory, _job_in(shard), kind)
    vanished = _relay(relays, shard, relay_lease_seconds=0.5, relay_batch_size=100)
    survivor = _relay(relays, shard, relay_lease_seconds=0.5, relay_batch_size=100)

    assert _ids(vanished.claim(), ids) == ids  # ...and it is never heard of again
    assert _ids(survivor.claim(), ids) == []  # the lease holds
    eventlet.sleep(0.6)
    claim = survivor.claim()
    survivor.settle(claim, survivor.publish(claim))

    assert _ids(claim, ids) == ids
    assert sorted(tap.message_ids()) == sorted(ids)
    assert _left(session_factory, ids) == []


def test_a_relay_whose_lease_ran_out_leaves_the_rows_to_their_new_claimant(
    session_factory: Any, relays: list[Relay], kind: str, tap: Tap
) -> None:
    shard = 13
    ids = _add_rows(session_factory, _job_in(shard), kind)
    slow = _relay(relays, shard, relay_lease_seconds=0.2, relay_batch_size=100)
    fresh = _relay(relays, shard, relay_lease_seconds=30, relay_batch_size=100)

    late = slow.claim()
    eventlet.sleep(0.3)
    taken = fresh.claim()
    slow.settle(late, slow.publish(late))  # published, but the rows are fresh's now
    left_to_fresh = _left(session_factory, ids)
    fresh.settle(taken, fresh.publish(taken))

    assert _ids(late, ids) == ids and _ids(taken, ids) == ids
    assert left_to_fresh == sorted(ids)
    assert _left(session_factory, ids) == []
    assert sorted(tap.message_ids()) == sorted(ids + ids)  # twice: consumers' inboxes absorb it


def test_a_relay_taking_a_shard_over_publishes_its_previous_owners_claims_at_once_in_order(
    session_factory: Any, relays: list[Relay], kind: str, tap: Tap
) -> None:
    previous = _relay(relays, None, relay_lease_seconds=30, relay_batch_size=100)
    assert len(previous.shards) == SHARDS  # the only relay holds every shard
    shard = sorted(previous.shards)[0]
    ids = _add_rows(session_factory, _job_in(shard), kind)
    assert _ids(previous.claim(), ids) == ids
    previous.close()  # it dies holding the claim: its session, and shards, are gone

    successor = _relay(relays, None, relay_lease_seconds=30, relay_batch_size=100)
    claim = successor.claim()
    successor.settle(claim, successor.publish(claim))

    assert shard in successor.shards
    assert _ids(claim, ids) == ids  # at once, not after the 30 s lease
    assert tap.message_ids() == ids  # in seq order
    assert _left(session_factory, ids) == []


def test_a_nacked_row_stays_and_is_published_after_a_backoff(
    session_factory: Any, relays: list[Relay], amqp_uri: str, kind: str, tap: Tap
) -> None:
    shard = 17
    ids = _add_rows(session_factory, _job_in(shard), kind, count=2)
    # A queue that refuses every message makes the broker nack the publish.
    trap = Tap(amqp_uri, [])
    refusing, _, _ = trap.channel.queue_declare(
        "", exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    trap.channel.queue_bind(refusing, EVENTS_EXCHANGE, kind)
    relay = _relay(relays, shard, relay_batch_size=100)

    first = relay.claim()
    nacked = relay.publish(first)
    relay.settle(first, nacked)
    held_back = relay.claim()  # released with a backoff: not due yet
    trap.channel.queue_delete(refusing)
    trap.close()
    eventlet.sleep(2.1)
    second = relay.claim()
    relay.settle(second, relay.publish(second))

    assert {str(i) for i in nacked.failed} == set(ids) and not nacked.acked
    assert _ids(held_back, ids) == []
    assert _ids(second, ids) == ids
    assert _left(session_factory, ids) == []
    assert sorted(set(tap.message_ids())) == sorted(ids)


def test_a_returned_step_message_stays_and_is_published_into_its_queue_declared_again(
    session_factory: Any, relays: list[Relay], amqp_uri: str
) -> None:
    function = f"t_gone_{uuid.uuid4().hex[:6]}"
    shard = 19
    job_id = _job_in(shard)

    def step_row() -> str:
        message = StepMessage(
            process_id=uuid.uuid4(), job_id=job_id, step="s", function=function, attempt=1, input={}
        )
        with unit_of_work(session_factory) as session:
            out = OutboxWriter(session, job_id)
            row_id = out.step(message)
            out.flush()
        return str(row_id)

    relay = _relay(relays, shard, relay_batch_size=100)
    first = step_row()
    claim = relay.claim()
    relay.settle(claim, relay.publish(claim))  # declares the function's queue
    admin = Tap(amqp_uri, [])
    admin.channel.queue_delete(step_queue_name(function))  # someone deletes it
    second = step_row()
    claim = relay.claim()
    returned = relay.publish(claim)
    relay.settle(claim, returned)
    eventlet.sleep(2.1)
    claim = relay.claim()
    relay.settle(claim, relay.publish(claim))
    queued = admin.messages_in(step_queue_name(function))
    admin.close()

    assert _left(session_factory, [first]) == []
    assert {str(i) for i in returned.failed} == {second}
    assert _ids(claim, [second]) == [second]
    assert _left(session_factory, [second]) == []
    assert queued == 1


def test_a_relay_that_loses_its_database_session_reconnects_and_goes_on(
    session_factory: Any, database_url: str, platform_env: dict[str, str], kind: str, tap: Tap
) -> None:
    relay = Relay()
    thread = eventlet.spawn(relay.run)
    try:
        before = _add_rows(session_factory, _job_in(23), kind, count=3)
        for _ in range(200):
            if not _left(session_factory, before):
                break
            eventlet.sleep(0.05)
        with psycopg.connect(libpq_dsn(database_url), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND classid::bigint = %s AND objsubid = 2"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (MEMBER_LOCK,),
            ).fetchall()
        after = _add_rows(session_factory, _job_in(29), kind, count=3)
        for _ in range(200):
            if not _left(session_factory, after):
                break
            eventlet.sleep(0.05)
    finally:
        relay.stop()
        thread.wait()

    assert len(killed) == 1
    assert _left(session_factory, before + after) == []
    assert set(tap.message_ids()) == set(before + after)
