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
- a relay that loses its database session reconnects and goes on;
- a relay notices, while idle, a broker connection that ended or went
  silent, and reconnects; tending the idle connection reads the broker's
  heartbeats without waiting for more (which would keep a relay from a
  NOTIFY); a pass whose publication failed releases its
  claim; a relay reconnects within a couple of seconds of the broker's
  return; SIGTERM stops it within seconds while a server does not answer;
- a step queue that exists with other arguments is published to as it is;
- a pass's messages leave in one socket write, in order;
- a transaction's events go out as one message, routed by what they are
  about, also from a row written before the upgrade that gave rows of
  events their routing key.

Broker faults go through :class:`BrokerProxy`, a TCP proxy in front of the
session's broker that a test can cut, silence or shut, so the shared
broker itself is never disturbed.

The rows are events about a made-up aggregate of each test's own, published
on ``autostep.events`` with that aggregate's routing key; a tap queue bound
to it sees every publication.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select as os_select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse, urlunparse

import eventlet
import psycopg
import pytest
from sqlalchemy import select, text

from autostep import confirmed
from autostep.confirmed import ConfirmedPublisher
from autostep.db import unit_of_work
from autostep.messages import StepMessage
from autostep.migrate import downgrade, upgrade
from autostep.models import Outbox
from autostep.outbox import SHARDS, OutboxWriter
from autostep.relay import MEMBER_LOCK, Claim, Relay
from autostep.settings import Settings, libpq_dsn
from autostep.topology import (
    EVENTS_EXCHANGE,
    events_routing_key,
    step_queue_arguments,
    step_queue_name,
)
from tests.helpers import Tap, socket_writes

ROWS = 12
#: Seconds within which a relay must notice a broker fault, or be back after one:
#: a few heartbeats, far below the 30 s a relay waits for confirms.
NOTICE_WITHIN = 8.0
BACK_WITHIN = 3.5
#: Seconds a relay may take to exit after SIGTERM while a server does not answer.
STOP_WITHIN = 8.0


class BrokerProxy:
    """A TCP proxy in front of the broker, for the faults the broker's clients must survive.

    - :meth:`cut` closes every proxied connection, as a broker restart does;
    - :meth:`silence` stops forwarding on the connections open now, leaving
      them open, as a NAT or load balancer that dropped an idle connection
      does (new connections are forwarded);
    - :meth:`shut` also refuses new connections until :meth:`open`.

    :attr:`accepted` counts the connections clients opened through it.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlparse(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.accepted = 0
        self._pipes: list[tuple[socket.socket, socket.socket, list[bool]]] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self._server: Any = None
        self.open()
        credentials = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else "guest:guest"
        self.uri = urlunparse(parts._replace(netloc=f"{credentials}@127.0.0.1:{self.port}"))

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._server = eventlet.spawn(self._accept, listener)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(self.upstream)
            live = [True]
            self._pipes.append((client, upstream, live))
            eventlet.spawn(self._pump, client, upstream, live)
            eventlet.spawn(self._pump, upstream, client, live)

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, live: list[bool]) -> None:
        """Forward ``source`` to ``target`` until ``source`` ends; then close ``source``.

        Each socket is closed by the one green thread that reads it, once it
        stopped reading: closing a socket another green thread waits on
        confuses eventlet when its descriptor number is reused at once.
        """
        try:
            while data := source.recv(65536):
                if live[0]:
                    target.sendall(data)  # silenced: what arrives is dropped
        except OSError:
            pass
        if live[0]:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_RDWR)  # the end passes through
        source.close()

    def cut(self) -> None:
        """End every proxied connection, both ways."""
        for client, upstream, _ in self._pipes:
            for end in (client, upstream):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
        self._pipes.clear()

    def silence(self) -> None:
        for _, _, live in self._pipes:
            live[0] = False

    def shut(self) -> None:
        if self._listener is not None:
            self._server.kill()
            self._listener.close()
            self._listener = None
        self.cut()

    def close(self) -> None:
        self.shut()


@pytest.fixture
def kind() -> str:
    """An aggregate (and event type) of this test alone: its rows route to ``<kind>.events``."""
    return f"test.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tap(amqp_uri: str, kind: str) -> Iterator[Tap]:
    consumer = Tap(amqp_uri, [(EVENTS_EXCHANGE, events_routing_key(kind))])
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


@pytest.fixture
def proxy(amqp_uri: str) -> Iterator[BrokerProxy]:
    broker = BrokerProxy(amqp_uri)
    yield broker
    broker.close()


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        eventlet.sleep(0.05)
    return True


def _running(relay: Relay) -> Any:
    """``relay.run()`` in a green thread, once it is connected and waiting."""
    thread = eventlet.spawn(relay.run)
    assert _wait_for(lambda: relay.shards != set(), 10), "the relay did not connect"
    return thread


def _job_in(shard: int) -> uuid.UUID:
    base = uuid.uuid4().int
    return uuid.UUID(int=base - base % SHARDS + shard)


def _add_rows(session_factory: Any, job_id: uuid.UUID, kind: str, count: int = ROWS) -> list[str]:
    ids = []
    with unit_of_work(session_factory) as session:
        for n in range(count):  # a row each (one transaction's events share one row)
            out = OutboxWriter(session, job_id, aggregate=kind)
            out.event(kind, job_id, {"n": n})
            ids += out.flush()
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


def test_a_pass_sends_its_messages_in_one_write_in_order(
    session_factory: Any, relays: list[Relay], kind: str, tap: Tap
) -> None:
    shard = 13
    ids = _add_rows(session_factory, _job_in(shard), kind, count=40)
    relay = _relay(relays, shard, relay_batch_size=100)
    assert relay.publisher.connection is not None
    with socket_writes(relay.publisher.connection.transport) as writes:
        claim = relay.claim()
        publication = relay.publish(claim)
    relay.settle(claim, publication)

    assert _ids(claim, ids) == ids
    assert {str(i) for i in publication.acked} >= set(ids)
    assert len(writes) == 1, f"{len(claim.rows)} messages went out in {len(writes)} writes"
    assert tap.message_ids() == ids
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
    trap.channel.queue_bind(refusing, EVENTS_EXCHANGE, events_routing_key(kind))
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


def test_an_idle_relay_notices_its_broker_connection_ended_and_reconnects(
    session_factory: Any, proxy: BrokerProxy, kind: str, tap: Tap
) -> None:
    relay = Relay(Settings(amqp_uri=proxy.uri))
    thread = _running(relay)
    try:
        proxy.cut()  # the broker restarted, say; the relay has nothing to publish
        reconnected = _wait_for(lambda: proxy.accepted >= 2, NOTICE_WITHIN)
        ids = _add_rows(session_factory, _job_in(31), kind, count=3)
        published = _wait_for(lambda: not _left(session_factory, ids), NOTICE_WITHIN)
    finally:
        relay.stop()
        thread.wait()

    assert reconnected, "the idle relay did not notice that its connection ended"
    assert published
    assert sorted(set(tap.message_ids())) == sorted(ids)


def test_an_idle_relay_notices_its_broker_connection_went_silent_and_reconnects(
    session_factory: Any, proxy: BrokerProxy, kind: str, tap: Tap
) -> None:
    relay = Relay(Settings(amqp_uri=proxy.uri))
    thread = _running(relay)
    try:
        proxy.silence()  # dropped by something in between: no end, no data
        reconnected = _wait_for(lambda: proxy.accepted >= 2, NOTICE_WITHIN)
        ids = _add_rows(session_factory, _job_in(37), kind, count=3)
        published = _wait_for(lambda: not _left(session_factory, ids), NOTICE_WITHIN)
    finally:
        relay.stop()
        thread.wait()

    assert reconnected, "the idle relay did not notice that its connection went silent"
    assert published
    assert sorted(set(tap.message_ids())) == sorted(ids)


def test_tending_an_idle_broker_connection_reads_its_heartbeats_and_waits_for_nothing_more(
    amqp_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While idle, the relay and the step dispatcher tend their connection
    # between waits for work (a NOTIFY, a handed-over row). A heartbeat is a
    # frame but no method: reading on past it until a method comes would keep
    # them from their work for a whole tick, here made far longer than the
    # bound below.
    monkeypatch.setattr(confirmed, "TICK_SECONDS", 60.0)
    publisher = ConfirmedPublisher(amqp_uri, heartbeat=1, connect_timeout=5)
    publisher.connect()
    try:
        conn = publisher.connection
        assert conn is not None
        for _ in range(3):
            assert os_select.select([conn.sock], [], [], 5)[0], "the broker sent no heartbeat"
            frames = conn.bytes_recv
            started = time.monotonic()
            publisher.tend()
            waited = time.monotonic() - started
            assert conn.bytes_recv > frames, "tend() did not read the heartbeat"
            assert waited < 10, f"tend() waited {waited:.0f}s for a frame after the heartbeat"
    finally:
        publisher.close()


def test_a_failed_publication_releases_its_claim_at_once(
    session_factory: Any, relays: list[Relay], proxy: BrokerProxy, kind: str, tap: Tap
) -> None:
    shard = 41
    failing = _relay(relays, shard, amqp_uri=proxy.uri, relay_lease_seconds=30)
    other = _relay(relays, shard, relay_lease_seconds=30)
    proxy.cut()
    ids = _add_rows(session_factory, _job_in(shard), kind)

    with pytest.raises(OSError):
        failing.pass_once()
    claim = other.claim()  # not 30 s later: now
    other.settle(claim, other.publish(claim))

    assert _ids(claim, ids) == ids
    assert _left(session_factory, ids) == []
    assert set(tap.message_ids()) == set(ids)


def test_a_relay_is_back_within_seconds_of_its_brokers_return(
    session_factory: Any, proxy: BrokerProxy, kind: str, tap: Tap
) -> None:
    relay = Relay(Settings(amqp_uri=proxy.uri))
    thread = _running(relay)
    try:
        proxy.shut()  # the broker is gone for a while
        ids = _add_rows(session_factory, _job_in(43), kind, count=3)
        eventlet.sleep(9)  # reconnection attempts fail meanwhile
        proxy.open()
        back = _wait_for(lambda: not _left(session_factory, ids), BACK_WITHIN)
    finally:
        relay.stop()
        thread.wait()

    assert back, f"rows not published within {BACK_WITHIN}s of the broker's return"
    assert sorted(set(tap.message_ids())) == sorted(ids)


@pytest.mark.parametrize("hung", ["database", "broker"])
def test_sigterm_stops_a_relay_within_seconds_while_a_server_does_not_answer(
    platform_env: dict[str, str], hung: str
) -> None:
    # A server that does not answer: connections are accepted (by the kernel) and
    # never served, as a frozen server or a dropped route leaves them.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        variable, url = {
            "database": (
                "AUTOSTEP_DATABASE_URL",
                f"postgresql+psycopg://postgres@127.0.0.1:{port}/x",
            ),
            "broker": ("AUTOSTEP_AMQP_URI", f"amqp://guest:guest@127.0.0.1:{port}/"),
        }[hung]
        relay = subprocess.Popen(
            [sys.executable, "-m", "autostep.cli", "relay"],
            env={**os.environ, **platform_env, variable: url},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            eventlet.sleep(1.5)  # started, and waiting for the silent server
            relay.send_signal(signal.SIGTERM)
            try:
                code = relay.wait(STOP_WITHIN)
            except subprocess.TimeoutExpired:
                code = None
        finally:
            if relay.poll() is None:
                relay.kill()
            output = relay.communicate()[0].decode(errors="replace")

    assert code == 0, f"relay still running {STOP_WITHIN}s after SIGTERM:\n{output}"


def test_a_transactions_events_go_out_as_one_message_also_when_written_before_the_upgrade(
    session_factory: Any, database_url: str, relays: list[Relay], kind: str, tap: Tap
) -> None:
    shard = 47
    job_id = _job_in(shard)
    downgrade(database_url, "0006")  # events rows were written with no routing key
    try:
        with unit_of_work(session_factory) as session:
            out = OutboxWriter(session, job_id, aggregate=kind)
            for n in range(3):
                out.event(kind, job_id, {"n": n})
            [old] = out.flush()
            session.execute(text("UPDATE outbox SET routing_key = '' WHERE id = :id"), {"id": old})
    finally:
        upgrade(database_url)
    with unit_of_work(session_factory) as session:
        out = OutboxWriter(session, job_id, aggregate=kind)
        out.event(kind, job_id, {"n": 3})
        [new] = out.flush()
    relay = _relay(relays, shard, relay_batch_size=100)
    claim = relay.claim()
    relay.settle(claim, relay.publish(claim))

    messages = tap.messages()
    assert [m.properties["message_id"] for m in messages] == [str(old), str(new)]
    assert [[e["payload"]["n"] for e in json.loads(m.body)] for m in messages] == [[0, 1, 2], [3]]
    assert {m.delivery_info["routing_key"] for m in messages} == {events_routing_key(kind)}


def test_a_step_queue_with_other_arguments_is_published_to_as_it_is(
    session_factory: Any, relays: list[Relay], amqp_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    function = f"t_other_{uuid.uuid4().hex[:6]}"
    shard = 47
    job_id = _job_in(shard)
    admin = Tap(amqp_uri, [])
    other = {**step_queue_arguments(), "x-delivery-limit": 3}
    admin.channel.queue_declare(
        step_queue_name(function), durable=True, auto_delete=False, arguments=other
    )
    message = StepMessage(
        process_id=uuid.uuid4(), job_id=job_id, step="s", function=function, attempt=1, input={}
    )
    with unit_of_work(session_factory) as session:
        out = OutboxWriter(session, job_id)
        row_id = str(out.step(message))
        out.flush()
    relay = _relay(relays, shard, relay_batch_size=100)

    with caplog.at_level(logging.WARNING, logger="autostep"):
        relay.pass_once()
        relay.pass_once()  # the queue counts as declared: no second warning
    queued = admin.messages_in(step_queue_name(function))
    admin.channel.queue_delete(step_queue_name(function))
    admin.close()

    assert _left(session_factory, [row_id]) == []
    assert queued == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert step_queue_name(function) in warnings[0] and "x-delivery-limit" in warnings[0]
