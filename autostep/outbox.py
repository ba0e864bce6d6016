"""Writes outbox rows inside the caller's transaction.

This is the only way autostep sends a message: :class:`OutboxWriter` collects
step messages and events while the engine changes rows, and
:meth:`OutboxWriter.flush` inserts them in one statement, in the same
transaction. Rows of one job go to one shard (``job_id`` modulo
:data:`SHARDS`) so one relay publishes them, in ``seq`` order.

**One row, and one message, for a transaction's events.** Every event of
one writer (one job's transaction: a step succeeded, the next one queued,
the job finished; or a trigger's change) goes into a single row of type
:data:`EVENTS_ROW` whose payload is the list of events, in order. The relay
publishes the row as one message, routed by what the events are about
(:func:`autostep.topology.events_routing_key`: ``job.events``,
``trigger.events``), so a step costs one event row and one event message
instead of two or three.

**Step messages the writer's process sends itself.** In a session marked by
:func:`dispatch_after_commit` (the function runner's), a step message's row
is written as due only after :data:`Settings.dispatch_grace_seconds
<autostep.settings.Settings>`, and the row is also handed to the session's
list, so that the runner publishes it right after the commit
(:mod:`autostep.dispatch`) and deletes it. The relay publishes such a row
only if it is still there once the grace has passed: the runner crashed, or
its broker connection failed, before publishing it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, insert
from sqlalchemy.orm import Session

from autostep.messages import StepMessage
from autostep.models import Outbox
from autostep.settings import get_settings
from autostep.topology import EVENTS_EXCHANGE, STEPS_EXCHANGE, events_routing_key

__all__ = [
    "EVENTS_ROW",
    "SHARDS",
    "OutboxWriter",
    "dispatch_after_commit",
    "shard_of",
    "withdraw_steps",
]

#: Core table: a plain multi-row INSERT, cheaper than the ORM's bulk path.
OUTBOX_TABLE: Table = Outbox.__table__  # type: ignore[assignment]

#: Fixed for the life of a database: relays divide these shards among them.
SHARDS = 64

#: The ``type`` of the row that holds a transaction's events (a JSON list of
#: ``{"type", "id", "payload"}``).
EVENTS_ROW = "events"

#: Key of :attr:`Session.info` that holds the step rows to publish after commit.
_DISPATCH = "autostep.dispatch"


def shard_of(job_id: uuid.UUID) -> int:
    return job_id.int % SHARDS


def dispatch_after_commit(session: Session) -> list[dict[str, Any]]:
    """Mark ``session``: its writers' step rows are for its caller to publish after commit.

    Returns the list they are collected in (rows as :meth:`OutboxWriter.take`
    gives them). Only for a caller that publishes them (the function
    runner); otherwise they would wait for the relay's grace.
    """
    rows: list[dict[str, Any]] = session.info.setdefault(_DISPATCH, [])
    return rows


class OutboxWriter:
    """Collects the messages of one transaction of one job (or trigger)."""

    def __init__(self, session: Session, job_id: uuid.UUID, *, aggregate: str = "job") -> None:
        self.session = session
        self.job_id = job_id
        self.aggregate = aggregate
        self._events: list[dict[str, Any]] = []
        self._steps: list[dict[str, Any]] = []

    def step(self, message: StepMessage, *, delay: float = 0.0) -> uuid.UUID:
        """A message that runs a step's function; ``delay`` seconds later if given."""
        direct = delay <= 0 and _DISPATCH in self.session.info
        if direct:
            delay = get_settings().dispatch_grace_seconds
        row = self._row(
            aggregate_type="process",
            aggregate_id=message.process_id,
            type="step",
            exchange=STEPS_EXCHANGE,
            routing_key=message.function,
            mandatory=True,
            payload=message.payload(),
        )
        if delay > 0:
            row["available_at"] = datetime.now(UTC) + timedelta(seconds=delay)
        self._steps.append(row)
        if direct:
            self.session.info[_DISPATCH].append(row)
        return uuid.UUID(str(row["id"]))

    def event(self, type_: str, aggregate_id: uuid.UUID, payload: dict[str, Any]) -> None:
        """An event such as ``job.updated`` for followers of runs."""
        self._events.append({"type": type_, "id": str(aggregate_id), "payload": payload})

    def take(self) -> list[dict[str, Any]]:
        """The rows to insert, JSON-ready, in ``seq`` order; the writer is empty afterwards.

        The events row first (the grid sees a step queued before it runs),
        then the step messages.
        """
        rows = self._steps
        if self._events:
            events = self._row(
                aggregate_type=self.aggregate,
                aggregate_id=self.job_id,
                type=EVENTS_ROW,
                exchange=EVENTS_EXCHANGE,
                routing_key=events_routing_key(self.aggregate),
                mandatory=False,
                payload=self._events,
            )
            rows = [events, *rows]
        self._events, self._steps = [], []
        return rows

    def _row(self, **row: Any) -> dict[str, Any]:
        row.update(
            id=str(uuid.uuid4()),
            shard=shard_of(self.job_id),
            attempts=0,
            aggregate_id=str(row["aggregate_id"]),
        )
        return row

    def flush(self) -> list[uuid.UUID]:
        """Insert what was collected; call it once, last, in the transaction.

        Returns the ids of the rows, in order (a row's id is its message's
        ``message_id``).
        """
        rows = self.take()
        immediate = [row for row in rows if "available_at" not in row]
        delayed = [row for row in rows if "available_at" in row]
        for batch in (immediate, delayed):
            if batch:
                # RETURNING makes SQLAlchemy batch the rows into one cached
                # multi-row INSERT ("insertmanyvalues"): one round trip
                self.session.execute(insert(OUTBOX_TABLE).returning(OUTBOX_TABLE.c.seq), batch)
        return [uuid.UUID(row["id"]) for row in rows]


def withdraw_steps(session: Session, process_ids: list[uuid.UUID]) -> int:
    """Delete the unsent step messages of cancelled processes; returns how many.

    Rows a relay is publishing right now (leased) are left to it: their
    runner finds the process finished and skips them.
    """
    if not process_ids:
        return 0
    table = OUTBOX_TABLE
    deleted = session.connection().execute(
        delete(table).where(
            table.c.type == "step",
            table.c.aggregate_id.in_(process_ids),
            table.c.lease_token.is_(None),
        )
    )
    return int(deleted.rowcount)
