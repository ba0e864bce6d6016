"""Step messages a function runner publishes itself, right after its commit.

The relay is the safety net, not the path: when a runner's transaction
writes a next step (:func:`autostep.outbox.dispatch_after_commit` marks the
runner's session), the step message's outbox row is due only after
``dispatch_grace_seconds``, and the runner hands the row to this process's
:class:`StepDispatcher` once the transaction committed. The dispatcher, one
green thread per runner process, publishes what it was handed (with
confirms, step messages mandatory, as the relay does:
:class:`~autostep.confirmed.ConfirmedPublisher`) and then deletes the
confirmed rows, many in one statement, every 50 ms at most. So a step costs no NOTIFY, no relay
claim, no lease and no relay publish, and the next step starts without
waiting for the relay.

What can go wrong leaves the row in the outbox, where the relay publishes it
once the grace has passed:

- the runner dies after its commit and before publishing (rows handed over
  live only in memory);
- the broker connection fails, or a message is nacked or returned as
  unroutable (the relay declares the missing queue and retries);
- the delete is lost: the relay publishes the row a second time, and the
  consumer's inbox makes the duplicate a no-op.

**Order.** Step messages of one job are ordered by cause (a step's message
is written by the transaction that finished the step before it, and the
children of a fan-out come from one transaction, published in order), so
publishing them from the runner that wrote them keeps a job's order; only a
message the relay publishes after the grace comes late, and its consumer
checks it against the process's current attempt. Events stay on the relay,
which publishes a job's rows in ``seq`` order.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
import uuid
from typing import Any

import amqp
import eventlet
import psycopg
from eventlet.queue import Empty, LightQueue

from autostep.confirmed import ConfirmedPublisher
from autostep.exceptions import InfrastructureError
from autostep.settings import libpq_dsn

__all__ = ["StepDispatcher", "step_dispatcher"]

log = logging.getLogger(__name__)

#: Longest wait for rows before the dispatcher tends its broker connection.
TICK_SECONDS = 0.5
#: Seconds a connection attempt (TCP and handshake) to either server may take.
CONNECT_TIMEOUT_SECONDS = 3.0
#: AMQP heartbeat of the dispatcher's connection.
HEARTBEAT_SECONDS = 10
#: Reconnection delays: the first, and the most (each drawn with jitter below it).
RECONNECT_MIN_SECONDS = 0.25
RECONNECT_MAX_SECONDS = 5.0
#: Confirmed rows are deleted when this many wait, or when the first of them has
#: waited this long: a delete costs a round trip and a commit, which a chain of
#: steps would otherwise pay at every step, while the next step waits for the CPU.
DELETE_BATCH = 500
DELETE_AFTER_SECONDS = 0.05
#: Rows published in one go at most.
PUBLISH_BATCH = 500

DELETE = "DELETE FROM outbox WHERE id = ANY(%(ids)s)"


class StepDispatcher:
    """Publishes the step rows of this process's commits, then deletes them."""

    def __init__(self, amqp_uri: str, database_url: str) -> None:
        self.amqp_uri = amqp_uri
        self.database_url = database_url
        self.publisher = ConfirmedPublisher(
            amqp_uri, heartbeat=HEARTBEAT_SECONDS, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
        #: Rows published and confirmed (deleted or about to be).
        self.published = 0
        #: Rows given up on (left to the relay).
        self.left_to_relay = 0
        self._queue: LightQueue = LightQueue()
        self._confirmed: list[uuid.UUID] = []
        self._delete_at = 0.0
        self._db: psycopg.Connection[Any] | None = None
        self._thread: Any = None
        self._stopping = False
        self.users = 0

    def send(self, rows: list[dict[str, Any]]) -> None:
        """Publish ``rows`` (outbox step rows of a committed transaction) soon.

        Never blocks and never fails: what the dispatcher cannot publish,
        the relay will.
        """
        if rows and self._thread is not None:
            self._queue.put(rows)

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = eventlet.spawn(self._run)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish what was handed over (for at most ``timeout`` s), then stop."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._queue.put([])  # wake it up
        with eventlet.Timeout(timeout, False):
            thread.wait()
        thread.kill()
        self._close()

    # -- the green thread -----------------------------------------------------

    def _run(self) -> None:
        delay = RECONNECT_MIN_SECONDS
        outage: str | None = None
        while not (self._stopping and self._queue.empty()):
            try:
                self._connect()
                if outage is not None:
                    log.info("step dispatcher connected again")
                    outage = None
                delay = RECONNECT_MIN_SECONDS
                self._loop()
            except (InfrastructureError, psycopg.Error, amqp.exceptions.AMQPError, OSError) as exc:
                reason = (str(exc) or type(exc).__name__).splitlines()[0]
                dropped = self._drop_handed_over()
                if outage != reason:
                    log.warning(
                        "step dispatcher lost a connection (%s); the relay publishes the step"
                        " messages it holds (%d) after their grace",
                        reason,
                        dropped,
                    )
                outage = reason
                self._close(broken=True)
                if self._stopping:
                    return
                eventlet.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
        try:
            self._delete_confirmed()
        except psycopg.Error as exc:  # the relay republishes them; the inbox absorbs it
            log.info("step dispatcher could not delete its last published rows: %s", exc)

    def _connect(self) -> None:
        if self._db is None:
            db = psycopg.connect(
                libpq_dsn(self.database_url),
                autocommit=True,
                connect_timeout=math.ceil(CONNECT_TIMEOUT_SECONDS),
            )
            # A lost delete only republishes, after the grace, a row the
            # consumer's inbox has: no need to wait for the WAL flush.
            db.execute("SET synchronous_commit = off")
            self._db = db
        if not self.publisher.connected:
            self.publisher.connect()

    def _loop(self) -> None:
        while True:
            rows = self._take()
            if rows:
                self._publish(rows)
            if self._confirmed and (
                len(self._confirmed) >= DELETE_BATCH
                or time.monotonic() >= self._delete_at
                or self._stopping
            ):
                self._delete_confirmed()
            if self._stopping and self._queue.empty():
                return
            if not rows:
                self.publisher.tend()

    def _take(self) -> list[dict[str, Any]]:
        """The rows handed over so far, waiting for the first until a delete or a tick is due."""
        rows: list[dict[str, Any]] = []
        wait = TICK_SECONDS
        if self._confirmed:
            wait = min(wait, max(0.0, self._delete_at - time.monotonic()))
        try:
            rows.extend(self._queue.get(timeout=0 if self._stopping else wait))
            while len(rows) < PUBLISH_BATCH:
                rows.extend(self._queue.get_nowait())
        except Empty:
            pass
        return rows

    def _publish(self, rows: list[dict[str, Any]]) -> None:
        messages = [
            {
                "id": uuid.UUID(str(row["id"])),
                "message_id": row["id"],
                "type": row["type"],
                "exchange": row["exchange"],
                "routing_key": row["routing_key"],
                "mandatory": row["mandatory"],
                "body": json.dumps(row["payload"], separators=(",", ":")),
            }
            for row in rows
        ]
        try:
            publication = self.publisher.publish(messages)
        except BaseException:
            self.left_to_relay += len(messages)
            raise
        if publication.acked and not self._confirmed:
            self._delete_at = time.monotonic() + DELETE_AFTER_SECONDS
        self._confirmed.extend(publication.acked)
        self.published += len(publication.acked)
        self.left_to_relay += len(messages) - len(publication.acked)

    def _delete_confirmed(self) -> None:
        if not self._confirmed or self._db is None:
            return
        ids, self._confirmed = self._confirmed, []
        self._db.execute(DELETE, {"ids": ids})

    def _drop_handed_over(self) -> int:
        """Forget the rows handed over (the relay publishes them after the grace)."""
        dropped = 0
        while True:
            try:
                dropped += len(self._queue.get_nowait())
            except Empty:
                break
        self.left_to_relay += dropped
        self._confirmed.clear()  # republished after the grace; the inbox absorbs it
        return dropped

    def _close(self, *, broken: bool = False) -> None:
        self.publisher.close(broken=broken)
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except Exception:  # closing a broken connection
                log.debug("error while closing", exc_info=True)


_DISPATCHERS: dict[tuple[str, str], StepDispatcher] = {}


def step_dispatcher(amqp_uri: str, database_url: str) -> StepDispatcher:
    """The :class:`StepDispatcher` of this process for these servers (created on first use)."""
    key = (amqp_uri, database_url)
    if key not in _DISPATCHERS:
        _DISPATCHERS[key] = StepDispatcher(amqp_uri, database_url)
    return _DISPATCHERS[key]
