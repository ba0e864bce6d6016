"""Helpers the test tiers share: publishing and starting workflows, and a tap queue."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

import amqp
import psycopg
from sqlalchemy import text
from sqlalchemy.orm import Session

from autostep.catalog import publish_workflow
from autostep.db import unit_of_work
from autostep.runs import start_job
from autostep.settings import amqp_params, libpq_dsn
from autostep.topology import declare_base


def publish(session_factory: Any, project: str, definition: dict[str, Any]) -> None:
    """Publish ``definition`` as the next version of its workflow in ``project``."""
    with unit_of_work(session_factory) as session:
        publish_workflow(session, project, definition)


def start(session_factory: Any, project: str, workflow: str, data: dict[str, Any]) -> uuid.UUID:
    """Start a run of ``workflow`` with input ``data``; its job id."""
    with unit_of_work(session_factory) as session:
        return start_job(session, project, workflow, data).id


def outbox_events(
    session: Session, event_type: str, entity_id: uuid.UUID | str | None = None
) -> list[Any]:
    """The payloads of the ``event_type`` events (about ``entity_id``) still in the outbox.

    A transaction's events share one outbox row (a list), so they are read
    from the lists, in the order of their rows.
    """
    rows = session.execute(
        text(
            "SELECT e.value -> 'payload' FROM outbox AS o,"
            " jsonb_array_elements(o.payload) WITH ORDINALITY AS e(value, n)"
            " WHERE o.type = 'events' AND e.value ->> 'type' = :type"
            " AND (CAST(:id AS text) IS NULL OR e.value ->> 'id' = :id) ORDER BY o.seq, e.n"
        ),
        {"type": event_type, "id": None if entity_id is None else str(entity_id)},
    )
    return list(rows.scalars())


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (cooperatively) until ``condition()`` holds; AssertionError after ``timeout`` s."""
    import eventlet

    with eventlet.Timeout(timeout, AssertionError("condition not reached in time")):
        while not condition():
            eventlet.sleep(0.01)


def waiting_on_a_lock(database_url: str) -> int:
    """Sessions of the test database waiting for a lock right now."""
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(found[0]) if found else 0


def effects_by_step(session_factory: Any, job_id: uuid.UUID) -> list[tuple[str, int]]:
    """(step, how many effect rows its functions recorded) of a job, by step name.

    The effects are the rows ``tests.stepfuncs`` functions write into
    ``test_effect`` in their step's transaction.
    """
    with unit_of_work(session_factory) as session:
        rows = session.execute(
            text(
                "SELECT p.step, count(*) FROM test_effect e JOIN process p ON p.id = e.process_id"
                " WHERE p.job_id = :j GROUP BY p.step ORDER BY p.step"
            ),
            {"j": job_id},
        )
        return [(step, int(count)) for step, count in rows]


class Tap:
    """A queue of the test's own, bound next to the consumers' queues.

    It receives a copy of every message published with one of ``bindings``
    ((exchange, routing key) pairs), duplicates included, and takes nothing
    from the consumers: what a consumer would see, in the order it would.
    """

    def __init__(self, amqp_uri: str, bindings: Iterable[tuple[str, str]]) -> None:
        self.connection = amqp.Connection(**amqp_params(amqp_uri))
        self.connection.connect()
        self.channel = self.connection.channel()
        declare_base(self.channel)
        self.queue, _, _ = self.channel.queue_declare("", exclusive=True)
        for exchange, routing_key in bindings:
            self.channel.queue_bind(self.queue, exchange, routing_key)

    def messages(self) -> list[amqp.Message]:
        """The messages received since the last call, in arrival order."""
        received = []
        while (message := self.channel.basic_get(self.queue, no_ack=True)) is not None:
            received.append(message)
        return received

    def message_ids(self) -> list[str]:
        """The AMQP ``message_id`` of each message received since the last call."""
        return [message.properties["message_id"] for message in self.messages()]

    def messages_in(self, queue: str) -> int:
        """Ready messages in another ``queue`` (a passive declare)."""
        return int(self.channel.queue_declare(queue, passive=True).message_count)

    def close(self) -> None:
        self.connection.close()
