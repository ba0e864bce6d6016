"""Probes that say where a step's time goes, without touching autostep's code.

:class:`StepTracer` splits the steps of a linear run into hops, from the
``started_at``/``finished_at`` the runner writes on every process::

    finished_at(prev) ─► started_at   (between steps: the rest of the previous
                                       step's transaction, its write and its
                                       commit, the hand-over of the next
                                       step, its claim)
    started_at        ─► finished_at  (in-step: the function, then the
                                       completion locks the job and the
                                       process; ``finished_at`` is taken then)

A chain's next step usually runs in the runner that wrote it, straight from
its outbox row, without the broker. A step message that does go through
RabbitMQ is also seen by the tracer, which binds a queue of its own to
``autostep.steps`` and notes when each message of a function arrived there
(a copy: the runner's queue gets it at the same moment); such a step's
"between steps" splits further into commit+publish (up to the message's
arrival) and delivery+dispatch+claim.

A fast step has no ``running`` mark (the runner marks only steps still
running after ``running_mark_seconds``), so ``started_at`` is the runner's
clock when it called the function. All clocks are this machine's.

:class:`Sampler` counts, every few milliseconds during a throughput run,
where the in-flight steps are (outbox, RabbitMQ queue, runner prefetch,
running) and what the database sessions do; by Little's law the average
count in a stage divided by the throughput is the time a step spends there.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import defaultdict
from typing import Any

import amqp
import psycopg

from bench.resources import Platform, libpq

__all__ = ["Sampler", "StepTracer"]


class StepTracer:
    """Arrival times of the step messages of ``function``: ``{process id: epoch}``."""

    def __init__(self, plat: Platform, function: str) -> None:
        from autostep.settings import amqp_params
        from autostep.topology import STEPS_EXCHANGE

        self.arrivals: dict[str, float] = {}
        self._stop = threading.Event()
        self._conn = amqp.Connection(**amqp_params(plat.amqp_uri))
        self._conn.connect()
        channel = self._conn.channel()
        channel.exchange_declare(STEPS_EXCHANGE, "direct", durable=True, auto_delete=False)
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).queue
        channel.queue_bind(queue, STEPS_EXCHANGE, function)
        channel.basic_consume(queue, no_ack=True, callback=self._on_message)
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _on_message(self, message: amqp.Message) -> None:
        now = time.time()
        self.arrivals.setdefault(json.loads(message.body)["process_id"], now)

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                self._conn.drain_events(timeout=0.05)
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._conn.close()

    def hops(self, poll: psycopg.Connection[Any], job_id: str) -> dict[str, list[float]]:
        """Seconds per hop for every step but the first of the linear job ``job_id``.

        The keys in brackets split "between steps" for the steps whose
        message went through the broker, and are left out of any sum.
        """
        rows = poll.execute(
            "SELECT id, started_at, finished_at FROM process WHERE job_id = %s ORDER BY created_at",
            (job_id,),
        ).fetchall()
        time.sleep(0.2)  # a message published last may still be on its way to the tracer
        out: dict[str, list[float]] = defaultdict(list)
        for prev, this in itertools.pairwise(rows):
            finished_prev = prev[2].timestamp()
            started, finished = this[1].timestamp(), this[2].timestamp()
            out["between steps"].append(started - finished_prev)
            out["in-step"].append(finished - started)
            arrived = self.arrivals.get(str(this[0]))
            if arrived is not None:
                out["(through the broker: commit+publish)"].append(arrived - finished_prev)
                out["(through the broker: delivery+dispatch+claim)"].append(started - arrived)
        return out


class Sampler:
    """Samples, every ``interval`` seconds, where in-flight steps are."""

    FIELDS = (
        "outbox step rows",
        "outbox event rows",
        "queue ready",
        "runner, not yet running",
        "running",
        "db active",
        "db idle in txn",
        "db lock waits",
    )

    def __init__(self, plat: Platform, queue: str, interval: float = 0.05) -> None:
        from autostep.settings import amqp_params

        self.queue = queue
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        #: Database queries made (each is a transaction of its own).
        self.queries = 0
        #: Active database sessions by wait event ("CPU": none), summed over samples.
        self.waits: dict[str, int] = {}
        self._db = psycopg.connect(libpq(plat.database_url), autocommit=True)
        self._amqp = amqp.Connection(**amqp_params(plat.amqp_uri))
        self._amqp.connect()
        self._channel = self._amqp.channel()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            steps, events = self._db.execute(
                "SELECT count(*) FILTER (WHERE type = 'step'),"
                " count(*) FILTER (WHERE type <> 'step') FROM outbox"
            ).fetchone()  # type: ignore[misc]
            statuses: dict[str, int] = dict(
                self._db.execute(
                    "SELECT status, count(*) FROM process"
                    " WHERE status IN ('queued', 'running') GROUP BY status"
                ).fetchall()
            )
            active, idle_tx, locks = self._db.execute(
                "SELECT count(*) FILTER (WHERE state = 'active'),"
                " count(*) FILTER (WHERE state LIKE 'idle in%%'),"
                " count(*) FILTER (WHERE wait_event_type = 'Lock')"
                " FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).fetchone()  # type: ignore[misc]
            for event, count in self._db.execute(
                "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU'), count(*)"
                " FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
                " AND pid <> pg_backend_pid() GROUP BY 1"
            ).fetchall():
                self.waits[event] = self.waits.get(event, 0) + count
            self.queries += 4
            ready = self._channel.queue_declare(self.queue, passive=True).message_count
            queued = statuses.get("queued", 0)
            self.samples.append(
                {
                    "outbox step rows": steps,
                    "outbox event rows": events,
                    "queue ready": ready,
                    "runner, not yet running": max(0, queued - steps - ready),
                    "running": statuses.get("running", 0),
                    "db active": active,
                    "db idle in txn": idle_tx,
                    "db lock waits": locks,
                }
            )

    def close(self) -> dict[str, float]:
        """Stop; the mean of every field over the samples."""
        self._stop.set()
        self._thread.join(timeout=5)
        for resource in (self._db, self._amqp):
            with contextlib.suppress(Exception):  # already broken: the bench is tearing down
                resource.close()
        if not self.samples:
            return {}
        return {
            name: sum(sample[name] for sample in self.samples) / len(self.samples)
            for name in self.FIELDS
        }
