"""The inbox: the message ids each consumer has applied, for exactly-once effects.

A consumer records a message's id (the outbox row id, sent as AMQP
``message_id``) in the same transaction as the message's effects. A
redelivery then finds the row and changes nothing; a crash before the commit
leaves no row, and the redelivery does the work. :func:`claim` records a step
message and reads its process in one round trip (the function runner's hot
path); :func:`record` records any other message (a failure, a dead letter);
:func:`prune` forgets ids old enough that no redelivery can meet them.
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.orm import Session

from autostep.db import driver

__all__ = ["Claim", "claim", "claim_many", "prune", "record"]


class Claim(NamedTuple):
    """What :func:`claim` found: whether the message is new, and its process's state."""

    fresh: bool
    #: The process's status and attempt; None for a process the database never had.
    status: str | None
    attempt: int | None


_CLAIM = """
    WITH seen AS (
        INSERT INTO inbox (consumer, message_id) VALUES (%(consumer)s, %(message_id)s)
        ON CONFLICT DO NOTHING RETURNING 1),
    consumed AS (DELETE FROM outbox WHERE id = %(consumed)s)
    SELECT EXISTS (SELECT 1 FROM seen) AS fresh, p.status, p.attempt
    FROM (SELECT 1) AS one LEFT JOIN process AS p ON p.id = %(process_id)s
"""
_CLAIM_MANY = """
    WITH wanted AS (
        SELECT r.n, r.message_id, r.process_id
        FROM jsonb_to_recordset(%(rows)s) AS r(n int, message_id uuid, process_id uuid)),
    seen AS (
        INSERT INTO inbox (consumer, message_id)
        SELECT %(consumer)s, message_id FROM wanted ORDER BY message_id
        ON CONFLICT DO NOTHING RETURNING message_id)
    SELECT w.message_id IN (SELECT message_id FROM seen) AS fresh, p.status, p.attempt
    FROM wanted AS w
    LEFT JOIN process AS p ON p.id = w.process_id AND p.id = ANY(%(process_ids)s::uuid[])
    ORDER BY w.n
"""
_RECORD = text(
    """
    INSERT INTO inbox (consumer, message_id) VALUES (:consumer, :message_id)
    ON CONFLICT DO NOTHING RETURNING 1
    """
)
_PRUNE = "DELETE FROM inbox WHERE received_at < now() - make_interval(days => %(days)s)"


def claim(
    session: Session,
    consumer: str,
    message_id: uuid.UUID,
    process_id: uuid.UUID,
    *,
    consumed: uuid.UUID | None = None,
) -> Claim:
    """Record a step message for ``consumer`` and read its process, in one statement.

    A prepared statement on the session's psycopg connection, in its
    transaction. With ``consumed``, the same statement deletes that outbox
    row: a step run straight from its row, without the broker.
    """
    params = {
        "consumer": consumer,
        "message_id": message_id,
        "process_id": process_id,
        "consumed": consumed,
    }
    with driver(session).cursor() as cursor:
        cursor.execute(_CLAIM, params, prepare=True)
        row = cursor.fetchone()
    assert row is not None
    fresh, status, attempt = row
    return Claim(bool(fresh), status, attempt)


def claim_many(
    session: Session, consumer: str, messages: list[tuple[uuid.UUID, uuid.UUID]]
) -> list[Claim]:
    """:func:`claim` for several (message id, process id), in one statement; in their order.

    The message ids must differ. The inbox rows are inserted in the order of
    their ids, so that two transactions claiming the same messages wait for
    each other in one order.
    """
    rows = [
        {"n": n, "message_id": str(message_id), "process_id": str(process_id)}
        for n, (message_id, process_id) in enumerate(messages)
    ]
    with driver(session).cursor() as cursor:
        params = {
            "consumer": consumer,
            "rows": Jsonb(rows),
            # PostgreSQL takes a JSON array for 100 rows: the ids keep it on the primary key
            "process_ids": [process_id for _, process_id in messages],
        }
        cursor.execute(_CLAIM_MANY, params, prepare=True)
        found = cursor.fetchall()
    return [Claim(bool(fresh), status, attempt) for fresh, status, attempt in found]


def record(session: Session, consumer: str, message_id: uuid.UUID) -> bool:
    """Record a message for ``consumer``; False if it was recorded before."""
    inserted = session.execute(_RECORD, {"consumer": consumer, "message_id": message_id})
    return inserted.first() is not None


def prune(connection: psycopg.Connection[Any], days: int) -> int:
    """Delete ids recorded more than ``days`` ago; returns how many."""
    return connection.execute(_PRUNE, {"days": days}).rowcount
