"""The relay (the outbox agent): drains the outbox into RabbitMQ.

Rows reach the outbox through :class:`autostep.outbox.OutboxWriter`, in the
transaction of the change they announce; the relay publishes them after
that commit, to the exchanges of :mod:`autostep.topology`.

One loop per relay process:

1. **Own shards.** Outbox rows carry ``shard = job_id % 64``. Each relay
   holds a membership advisory lock plus session advisory locks on its
   shards, and every few seconds rebalances to ``ceil(64 / relays)`` shards,
   counting relays from ``pg_locks``. A relay that dies loses its session and
   its locks, and the others take its shards over. One shard has one
   owner, so **the rows of one job are published in ``seq`` order**, which is
   the order their transactions committed (every writer of a job locks the
   job row first). A relay that takes a shard over first releases the
   leases its previous owner held there (that owner lost its session, so it
   can no longer delete them), so it publishes those rows at once and in
   order rather than skipping them until their leases run out.
2. **Claim** (:meth:`Relay.claim`) due rows of its shards in one round trip
   (``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``),
   leasing them with a fresh token; a lease that ran out (its relay
   vanished) no longer protects its rows.
3. **Publish** them (:meth:`Relay.publish`, through
   :class:`~autostep.confirmed.ConfirmedPublisher`) in ``seq`` order on one
   confirm-mode channel, pipelined, step messages with ``mandatory`` set; the
   outbox id is the AMQP ``message_id``, which consumers record in their inbox.
   A row of events (one per transaction) is one message holding their list.
4. **Settle** (:meth:`Relay.settle`): delete the confirmed rows whose lease
   token is still ours, and release nacked or returned ones with a backoff
   (``available_at``); rows another relay claimed since are left to it.
5. **Wait** for ``NOTIFY autostep_outbox`` (fired by a statement trigger on
   insert when a step message is due at once), the next delayed row, or the
   poll: events notify no one, so a relay that found rows in the last
   ``relay_idle_after_seconds`` looks again every ``relay_poll_seconds``
   (0.05 s), an idle one every ``relay_idle_poll_seconds`` (1 s). A run
   started while the relay is idle wakes it (its first step is due at once),
   so only an event without a step message (a cancel, a changed trigger)
   can wait a second.

Step messages a function runner commits are published by the runner itself
(:mod:`autostep.dispatch`); their rows become due only after a grace, so
the relay publishes them only when the runner could not.

**Outages.** The relay reads its broker connection while it waits, every
:data:`TICK_SECONDS`, and keeps AMQP heartbeats going
(``relay_heartbeat_seconds``), so it notices a broker that restarted, or a
connection that went silent, within a second or two even when idle. A pass
whose publication fails releases its claim on the way out (the database is
usually fine when the broker is not), so its rows go out as soon as the
relay is back. It then reconnects both servers, retrying every
:data:`RECONNECT_MAX_SECONDS` at most (with jitter), so it is back within a
couple of seconds of a server's return. Connecting and every wait are
bounded, so :meth:`Relay.stop` (SIGTERM) takes effect within a few seconds
even while a server is down or unresponsive.

The owner of shard 0 also prunes inbox rows older than
``inbox_retention_days`` (:func:`autostep.inbox.prune`). Publishing twice is
possible (a crash between publish and delete); consumers are idempotent
through the inbox, so the effect happens once.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import amqp
import psycopg
from psycopg.rows import dict_row

from autostep import health, inbox
from autostep.confirmed import ConfirmedPublisher, Publication
from autostep.exceptions import DatabaseUnavailable, InfrastructureError
from autostep.outbox import SHARDS
from autostep.settings import Settings, get_settings, libpq_dsn

__all__ = ["MEMBER_LOCK", "SHARD_LOCK", "Claim", "Publication", "Relay"]

log = logging.getLogger(__name__)

#: Advisory lock namespaces (the first key of pg_advisory_lock(int, int)).
MEMBER_LOCK = 0x61730001
SHARD_LOCK = 0x61730002
RELEASE_BACKOFF_SECONDS = 2.0
#: How often a waiting relay reads its broker connection and drives heartbeats.
TICK_SECONDS = 0.5
#: Seconds a connection attempt (TCP and handshake) to either server may take.
CONNECT_TIMEOUT_SECONDS = 3.0
#: Reconnection delays: the first, and the most (each drawn with jitter below it).
RECONNECT_MIN_SECONDS = 0.25
RECONNECT_MAX_SECONDS = 2.0

#: Lease due rows and return their messages in ``seq`` order, one per row (a
#: row of events, :data:`autostep.outbox.EVENTS_ROW`, is one message holding the list).
CLAIM = """
WITH claimed AS (
    UPDATE outbox SET lease_token = %(token)s,
                      lease_until = now() + make_interval(secs => %(lease)s),
                      attempts = attempts + 1
    WHERE id IN (
        SELECT id FROM outbox
        WHERE shard = ANY(%(shards)s) AND available_at <= now()
          AND (lease_until IS NULL OR lease_until < now())
        ORDER BY seq LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED)
    RETURNING id, seq, type, exchange, routing_key, mandatory, payload, attempts)
SELECT id, seq, exchange, mandatory, attempts, type, routing_key, payload::text AS body,
       id AS message_id
FROM claimed
ORDER BY seq
"""
DELETE = "DELETE FROM outbox WHERE id = ANY(%(ids)s) AND lease_token = %(token)s"
RELEASE = """
UPDATE outbox SET lease_token = NULL, lease_until = NULL,
                  available_at = now() + make_interval(secs => %(delay)s)
WHERE id = ANY(%(ids)s) AND lease_token = %(token)s
"""
#: Leases a vanished owner held on the rows of the shards just taken over.
RELEASE_TAKEN_OVER = """
UPDATE outbox SET lease_token = NULL, lease_until = NULL
WHERE shard = ANY(%(shards)s) AND lease_token IS NOT NULL
"""
NEXT_DUE = """
SELECT extract(epoch FROM min(available_at) - now()) FROM outbox
WHERE shard = ANY(%(shards)s) AND lease_token IS NULL
"""
PRUNE_EVERY_SECONDS = 300.0

MEMBERS = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND classid::bigint = %(ns)s AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclass
class Claim:
    """Outbox rows leased to one relay under ``token``: their messages, in ``seq`` order.

    ``rows`` holds one dict per row and message (``id`` is the row's, and
    also the message's ``message_id``).
    """

    token: uuid.UUID
    rows: list[dict[str, Any]]

    @property
    def row_ids(self) -> set[uuid.UUID]:
        return {row["id"] for row in self.rows}


class Relay:
    """Claims outbox rows of its shards and publishes them with confirms."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.stopping = threading.Event()
        self.shards: set[int] = set()
        self.published = 0
        self._db: psycopg.Connection[Any] | None = None
        self.publisher = ConfirmedPublisher(
            self.settings.amqp_uri,
            heartbeat=self.settings.relay_heartbeat_seconds,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
        self._rebalanced_at = 0.0
        self._pruned_at = 0.0
        #: When a pass last found rows.
        self._busy_at = 0.0

    # -- lifecycle ----------------------------------------------------------

    def connect(self) -> None:
        db = psycopg.connect(
            libpq_dsn(self.settings.database_url),
            autocommit=True,
            connect_timeout=math.ceil(CONNECT_TIMEOUT_SECONDS),
        )
        db.execute("SELECT pg_advisory_lock(%s, pg_backend_pid())", (MEMBER_LOCK,))
        db.execute("LISTEN autostep_outbox")
        # A lost claim only delays rows until the lease ends; a lost delete
        # republishes rows the consumers' inbox already has: no need to wait
        # for the WAL flush on the relay's own commits.
        db.execute("SET synchronous_commit = off")
        self._db = db
        self.publisher.connect()
        self.rebalance()
        log.info("relay connected, holding %d of %d shards", len(self.shards), SHARDS)

    def close(self, *, broken: bool = False) -> None:
        """Close both connections; ``broken``: drop the broker's without a closing handshake."""
        self.publisher.close(broken=broken)
        if self._db is not None:
            try:
                self._db.close()
            except Exception:  # closing a broken connection
                log.debug("error while closing", exc_info=True)
        self._db = None
        self.shards.clear()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        """Relay until :meth:`stop`; reconnect with capped, jittered backoff on failures.

        An outage logs one warning when it begins (and one more if its reason
        changes, say from a lost connection to a refused one), and one line
        when the relay is connected again.
        """
        delay = RECONNECT_MIN_SECONDS
        outage: tuple[float, str] | None = None  # since when, and the last reason
        while not self.stopping.is_set():
            broken = False
            try:
                self.connect()
                if outage is not None:
                    log.info("relay back after %.1fs", time.monotonic() - outage[0])
                    outage = None
                delay = RECONNECT_MIN_SECONDS
                self._loop()
            except (InfrastructureError, psycopg.Error, amqp.exceptions.AMQPError, OSError) as exc:
                broken = True
                reason = (str(exc) or type(exc).__name__).splitlines()[0]
                if outage is None or outage[1] != reason:
                    log.warning(
                        "relay lost a connection (%s); reconnecting every %.0fs at most",
                        reason,
                        RECONNECT_MAX_SECONDS,
                    )
                outage = (outage[0] if outage else time.monotonic(), reason)
                pause = random.uniform(delay / 2, delay)
                # Alive while it waits for the servers: a restart would not bring them back.
                health.beat("relay", self.settings.health_dir)
                self.stopping.wait(pause)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
            finally:
                self.close(broken=broken)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            health.beat("relay", self.settings.health_dir)
            self.tend_broker()
            if time.monotonic() - self._rebalanced_at > self.settings.relay_rebalance_seconds:
                self.rebalance()
            if 0 in self.shards and time.monotonic() - self._pruned_at > PRUNE_EVERY_SECONDS:
                self.prune_inbox()
            claimed = self.pass_once()
            if claimed >= self.settings.relay_batch_size:
                continue
            if claimed:
                self._busy_at = time.monotonic()
            self._wait(self._idle_timeout())

    # -- shards -------------------------------------------------------------

    def rebalance(self) -> None:
        """Hold ``ceil(SHARDS / relays)`` shards: release extras, take free ones."""
        db = self._require_db()
        members = db.execute(MEMBERS, {"ns": MEMBER_LOCK}).fetchone()
        fair = math.ceil(SHARDS / max(1, members[0] if members else 1))
        for shard in sorted(self.shards)[fair:]:
            db.execute("SELECT pg_advisory_unlock(%s, %s)", (SHARD_LOCK, shard))
            self.shards.discard(shard)
        taken = []
        start = random.randrange(SHARDS)
        for offset in range(SHARDS):
            if len(self.shards) >= fair:
                break
            shard = (start + offset) % SHARDS
            if shard in self.shards:
                continue
            got = db.execute("SELECT pg_try_advisory_lock(%s, %s)", (SHARD_LOCK, shard)).fetchone()
            if got and got[0]:
                self.shards.add(shard)
                taken.append(shard)
        if taken:
            db.execute(RELEASE_TAKEN_OVER, {"shards": taken})
        self._rebalanced_at = time.monotonic()

    def prune_inbox(self) -> int:
        """Delete inbox rows past retention (done by the owner of shard 0)."""
        deleted = inbox.prune(self._require_db(), self.settings.inbox_retention_days)
        self._pruned_at = time.monotonic()
        return deleted

    # -- one pass -----------------------------------------------------------

    def pass_once(self) -> int:
        """Claim, publish and settle one batch; return how many rows it held.

        If the publication fails, the claim is released before the error
        goes on (see :meth:`release_failed`).
        """
        claim = self.claim()
        if claim.rows:
            try:
                publication = self.publish(claim)
            except BaseException:
                self.release_failed(claim)
                raise
            self.settle(claim, publication)
        return len(claim.row_ids)

    def claim(self) -> Claim:
        """Lease up to ``relay_batch_size`` due rows of this relay's shards."""
        token = uuid.uuid4()
        if not self.shards:
            return Claim(token, [])
        params = {
            "token": token,
            "lease": self.settings.relay_lease_seconds,
            "shards": sorted(self.shards),
            "limit": self.settings.relay_batch_size,
        }
        with self._require_db().cursor(row_factory=dict_row) as cur:
            cur.execute(CLAIM, params)
            return Claim(token, cur.fetchall())

    def publish(self, claim: Claim) -> Publication:
        """Publish the claimed messages in order and wait for every confirm (or return)."""
        return self.publisher.publish(claim.rows)

    def settle(self, claim: Claim, publication: Publication) -> None:
        """Delete the confirmed rows and release the failed ones, if still ours."""
        db = self._require_db()
        if publication.acked:
            db.execute(DELETE, {"ids": list(publication.acked), "token": claim.token})
        if publication.failed:
            params = {
                "ids": list(publication.failed),
                "token": claim.token,
                "delay": RELEASE_BACKOFF_SECONDS,
            }
            db.execute(RELEASE, params)
        self.published += len(publication.acked)

    def release_failed(self, claim: Claim) -> None:
        """After a failed publication: delete what the broker confirmed, release the rest now.

        The rows go out again as soon as a relay can publish, instead of
        waiting for their lease to run out. The database may be gone too:
        then the leases run out, or the next owner of the shards releases them.
        """
        batch = self.publisher.batch
        claimed = claim.row_ids
        acked = batch.acked & claimed
        params = {"ids": list(claimed - acked), "token": claim.token, "delay": 0.0}
        try:
            db = self._require_db()
            if acked:
                db.execute(DELETE, {"ids": list(acked), "token": claim.token})
            db.execute(RELEASE, params)
        except (InfrastructureError, psycopg.Error) as exc:
            log.info("could not release the rows of a failed publication (%s)", exc)

    # -- waiting ------------------------------------------------------------

    def _idle_timeout(self) -> float:
        """Seconds until the next pass: the poll, shorter while rows keep coming.

        ``relay_poll_seconds`` for ``relay_idle_after_seconds`` after a pass
        that found rows (events notify no one, so a busy relay looks often),
        then ``relay_idle_poll_seconds``; never past a delayed row's due time
        or the next rebalance.
        """
        settings = self.settings
        busy = time.monotonic() - self._busy_at < settings.relay_idle_after_seconds
        timeout = settings.relay_poll_seconds if busy else settings.relay_idle_poll_seconds
        if self.shards:
            row = self._require_db().execute(NEXT_DUE, {"shards": sorted(self.shards)}).fetchone()
            if row and row[0] is not None:
                timeout = min(timeout, max(float(row[0]), 0.0))
        elapsed = time.monotonic() - self._rebalanced_at
        rebalance_in = self.settings.relay_rebalance_seconds - elapsed
        return max(0.0, min(timeout, rebalance_in))

    def tend_broker(self) -> None:
        """Read what the broker sent meanwhile, and send a heartbeat if one is due.

        Raises (``OSError`` or an AMQP error) when the broker closed the
        connection or fell silent for two heartbeat intervals.
        """
        self.publisher.tend()

    def _wait(self, timeout: float) -> None:
        """Wait for a NOTIFY, at most ``timeout`` seconds, tending the broker meanwhile."""
        db = self._require_db()
        deadline = time.monotonic() + timeout
        while not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if any(True for _ in db.notifies(timeout=min(remaining, TICK_SECONDS), stop_after=1)):
                break
            self.tend_broker()
        # Drain notifications that piled up meanwhile, without waiting.
        for _ in db.notifies(timeout=0):
            pass

    def _require_db(self) -> psycopg.Connection[Any]:
        if self._db is None:
            raise DatabaseUnavailable("relay is not connected")
        return self._db
