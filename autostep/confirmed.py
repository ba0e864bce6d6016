"""Publishing outbox messages to RabbitMQ with publisher confirms.

The one place messages leave for the broker: the relay publishes what it
claimed from the outbox (:mod:`autostep.relay`), and a function runner
publishes the step messages of its own commits (:mod:`autostep.dispatch`).
Both hand :meth:`ConfirmedPublisher.publish` the messages of outbox rows, in
order, and learn which rows the broker confirmed: a row gives one message
(a row of events one holding their list), confirmed when the broker acks
it; a nack, or a step message returned as unroutable, fails its row. The
message's ``message_id`` is what consumers record in their inbox.

One connection and two channels: the publishes' channel is in confirm mode,
and step queues are declared on a channel of their own (a refused
declaration closes its channel, and must not take the confirms with it).

A batch's messages leave in one socket write
(:func:`autostep.socket_writes.corked`); then the publisher waits for
their confirms.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import amqp

from autostep.exceptions import BrokerUnavailable
from autostep.settings import amqp_params
from autostep.socket_writes import corked
from autostep.topology import declare_base, declare_step_queue

__all__ = ["CONFIRM_TIMEOUT_SECONDS", "ConfirmedPublisher", "Publication"]

log = logging.getLogger(__name__)

#: Seconds the broker has to confirm a batch before the publisher gives up on it.
CONFIRM_TIMEOUT_SECONDS = 30.0
#: Longest wait for one frame while waiting for confirms.
TICK_SECONDS = 0.5


@dataclass
class Publication:
    """The publishes of one batch and what the broker said of each."""

    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # delivery tag -> message
    #: Rows whose message the broker confirmed (and did not return).
    acked: set[uuid.UUID] = field(default_factory=set)
    failed: set[uuid.UUID] = field(default_factory=set)
    outstanding: set[int] = field(default_factory=set)


class ConfirmedPublisher:
    """One broker connection publishing outbox messages with confirms."""

    def __init__(self, amqp_uri: str, *, heartbeat: int, connect_timeout: float) -> None:
        self.amqp_uri = amqp_uri
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.connection: amqp.Connection | None = None
        self._channel: Any = None
        self._declaring: Any = None
        self._declared: set[str] = set()
        #: The publication under way (its confirms arrive through the callbacks).
        self.batch = Publication()
        self._next_tag = 1

    def connect(self) -> None:
        conn = amqp.Connection(
            **amqp_params(self.amqp_uri, heartbeat=self.heartbeat, timeout=self.connect_timeout)
        )
        self.connection = conn
        conn.connect()
        channel = conn.channel()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        declare_base(channel)
        self._channel, self._declaring = channel, conn.channel()
        self._declared.clear()
        self._next_tag = 1

    def close(self, *, broken: bool = False) -> None:
        """Close the connection; ``broken``: drop it without a closing handshake."""
        conn, self.connection = self.connection, None
        self._channel = self._declaring = None
        if conn is None:
            return
        if broken:
            conn.collect()
        try:
            conn.close()
        except Exception:  # closing a broken connection
            log.debug("error while closing", exc_info=True)

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.sock is not None

    def publish(self, messages: list[dict[str, Any]]) -> Publication:
        """Publish ``messages`` in order and wait for every confirm (or return).

        Each message has the ``id`` of its outbox row, its ``message_id``,
        ``type``, ``exchange``, ``routing_key``, ``mandatory``, ``body`` (JSON
        text) and, from the relay, ``seq``.
        """
        channel, conn = self._channel, self.connection
        if channel is None or conn is None:
            raise BrokerUnavailable("not connected to the broker")
        self.batch = batch = Publication()
        for row in messages:  # before the cork: a declaration waits for its answer
            if row["mandatory"] and row["routing_key"] not in self._declared:
                self._declaring = declare_step_queue(self._declaring, row["routing_key"])
                self._declared.add(row["routing_key"])
        with corked(conn.transport):
            self._publish_all(channel, messages)
        deadline = time.monotonic() + CONFIRM_TIMEOUT_SECONDS
        while batch.outstanding:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailable("publisher confirms timed out")
            with contextlib.suppress(TimeoutError):  # no frame within the tick
                conn.drain_events(timeout=min(remaining, TICK_SECONDS))
            conn.heartbeat_tick()
        return batch

    def _publish_all(self, channel: Any, messages: list[dict[str, Any]]) -> None:
        batch = self.batch
        for row in messages:
            headers = {"x-autostep-seq": row["seq"]} if row.get("seq") is not None else {}
            message = amqp.Message(
                row["body"],
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                message_id=str(row["message_id"]),
                type=row["type"],
                application_headers=headers,
            )
            channel.basic_publish(
                message,
                exchange=row["exchange"],
                routing_key=row["routing_key"],
                mandatory=row["mandatory"],
            )
            batch.rows[self._next_tag] = row
            batch.outstanding.add(self._next_tag)
            self._next_tag += 1

    def tend(self) -> None:
        """Read what the broker sent meanwhile, and send a heartbeat if one is due.

        Raises (``OSError`` or an AMQP error) when the broker closed the
        connection or fell silent for two heartbeat intervals.
        """
        conn = self.connection
        if conn is None or conn.sock is None:
            raise BrokerUnavailable("not connected to the broker")
        # Frames first (heartbeats among them), so a publisher that was busy
        # elsewhere does not take the broker's silence for death. One frame at
        # a time, and only while one is arriving: py-amqp's drain_events reads
        # on past a heartbeat until a method comes, which for an idle
        # publisher means waiting the whole tick for nothing (a relay deaf to
        # NOTIFY, a dispatcher deaf to its queue, for half a second).
        while select.select([conn.sock], [], [], 0)[0]:
            try:
                conn.blocking_read(timeout=TICK_SECONDS)
            except TimeoutError:
                break
        conn.heartbeat_tick()

    def _confirm(self, delivery_tag: int, multiple: bool, ok: bool) -> None:
        batch = self.batch
        tags = [t for t in batch.outstanding if t <= delivery_tag] if multiple else [delivery_tag]
        for tag in tags:
            if tag not in batch.outstanding:
                continue
            batch.outstanding.discard(tag)
            row_id = batch.rows[tag]["id"]
            if not ok:
                batch.failed.add(row_id)
            elif row_id not in batch.failed:  # a return comes before its ack
                batch.acked.add(row_id)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._confirm(delivery_tag, multiple, ok=True)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        log.warning("broker nacked delivery %s", delivery_tag)
        self._confirm(delivery_tag, multiple, ok=False)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        # A return precedes the message's ack: mark it so the ack cannot confirm
        # its row, and declare the queue again before the retry (someone deleted it).
        message_id = message.properties.get("message_id")
        log.warning("unroutable step message %s (no queue bound); will retry", message_id)
        self._declared.discard(routing_key)
        if message_id:  # a step message: its id is its row's
            self.batch.failed.add(uuid.UUID(message_id))
