"""Helpers the test tiers share: publishing and starting workflows, and a tap queue."""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import amqp
import psycopg
from sqlalchemy import text
from sqlalchemy.orm import Session

from autostep.catalog import publish_workflow
from autostep.db import unit_of_work
from autostep.runs import start_job
from autostep.settings import amqp_params, get_settings, libpq_dsn
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


#: The keys of the ids a payload carries: they differ from run to run.
PAYLOAD_IDS = {"id", "job_id", "process_id", "workflow_id", "version_id", "parent_id"}


def without_ids_and_times(payload: Any) -> Any:
    """A payload (a step message, events, an output) to compare between runs.

    Ids are left out, and a timestamp (a key ending in ``_at``) becomes
    whether it is set.
    """
    if isinstance(payload, list):
        return [without_ids_and_times(item) for item in payload]
    if isinstance(payload, dict):
        return {
            k: (v is not None) if k.endswith("_at") else without_ids_and_times(v)
            for k, v in payload.items()
            if k not in PAYLOAD_IDS
        }
    return payload


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


@dataclass
class Chains:
    """A runner and a relay serving chains of ``t_add`` steps, and what tests look at."""

    #: Starts a run of the chain (``tests.helpers.chain_definition``); its job id.
    start: Callable[[], uuid.UUID]
    #: Every step message of ``t_add``, duplicates included.
    tap: Tap
    session_factory: Any
    wait_for_job: Callable[..., dict[str, Any]]


#: Steps of the chains ``chain_definition`` makes.
CHAIN_STEPS = 4


def chain_definition(name: str, function: str = "t_add") -> dict[str, Any]:
    """A workflow of ``CHAIN_STEPS`` steps of ``function`` (``s0``, ``s1``, …) one after another."""
    steps: list[dict[str, Any]] = [
        {"name": f"s{i}", "function": function} for i in range(CHAIN_STEPS)
    ]
    for step, following in itertools.pairwise(steps):
        step["next"] = [{"to": following["name"]}]
    return {"name": name, "steps": steps}


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set these ``AUTOSTEP_`` variables for the block (settings read again), then unset them."""
    names = {f"AUTOSTEP_{key.upper()}": value for key, value in values.items()}
    os.environ.update(names)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name in names:
            del os.environ[name]
        get_settings.cache_clear()


def step_rows(session_factory: Any, job_id: uuid.UUID) -> int:
    """Step messages of ``job_id`` still in the outbox."""
    with unit_of_work(session_factory) as session:
        found = session.execute(
            text("SELECT count(*) FROM outbox WHERE type = 'step' AND payload ->> 'job_id' = :j"),
            {"j": str(job_id)},
        ).scalar()
        return int(found or 0)


def published_steps(tap: Tap, job_id: uuid.UUID) -> list[tuple[str, str]]:
    """(message id, step) of each step message of ``job_id`` the tap received, in order.

    Other tests' rows may be published meanwhile: only this job's count.
    """
    found = []
    for message in tap.messages():
        body = json.loads(message.body)
        if body["job_id"] == str(job_id):
            found.append((message.properties["message_id"], body["step"]))
    return found


def assert_chain_done_once(chains: Chains, job_id: uuid.UUID) -> None:
    """The chain's run succeeded, no step row of it is left, and every effect committed once."""
    assert chains.wait_for_job(job_id)["status"] == "succeeded"
    assert step_rows(chains.session_factory, job_id) == 0
    effects = effects_by_step(chains.session_factory, job_id)
    assert effects == [(f"s{i}", 1) for i in range(CHAIN_STEPS)]


@contextmanager
def socket_writes(transport: Any) -> Iterator[list[int]]:
    """The sizes of the writes that reach py-amqp ``transport``'s socket in the block.

    Wraps the transport's ``_write`` (its socket's ``sendall``), which
    :func:`autostep.socket_writes.corked` gathers frames in front of.
    """
    writes: list[int] = []
    send = transport._write

    def counted(data: Any) -> None:
        writes.append(len(data))
        send(data)

    transport._write = counted
    try:
        yield writes
    finally:
        transport._write = send
