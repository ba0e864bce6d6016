"""Writes outbox rows inside the caller's transaction.

This is the only way autostep sends a message: :class:`OutboxWriter` collects
step messages and events while the engine changes rows, and
:meth:`OutboxWriter.flush` inserts them in one statement, in the same
transaction. The relay publishes them after the commit. Rows of one job go
to one shard (``job_id`` modulo :data:`SHARDS`) so one relay publishes them,
in ``seq`` order.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, insert
from sqlalchemy.orm import Session

from autostep.messages import StepMessage
from autostep.models import Outbox
from autostep.topology import EVENTS_EXCHANGE, STEPS_EXCHANGE

__all__ = ["SHARDS", "OutboxWriter", "shard_of", "withdraw_steps"]

#: Core table: a plain multi-row INSERT, cheaper than the ORM's bulk path.
OUTBOX_TABLE: Table = Outbox.__table__  # type: ignore[assignment]

#: Fixed for the life of a database: relays divide these shards among them.
SHARDS = 64


def shard_of(job_id: uuid.UUID) -> int:
    return job_id.int % SHARDS


class OutboxWriter:
    """Collects the messages of one transaction of one job."""

    def __init__(self, session: Session, job_id: uuid.UUID) -> None:
        self.session = session
        self.job_id = job_id
        self.rows: list[dict[str, Any]] = []

    def step(self, message: StepMessage, *, delay: float = 0.0) -> uuid.UUID:
        """A message that runs a step's function; ``delay`` seconds later if given."""
        available_at = datetime.now(UTC) + timedelta(seconds=delay) if delay > 0 else None
        return self._add(
            aggregate_type="process",
            aggregate_id=message.process_id,
            type="step",
            exchange=STEPS_EXCHANGE,
            routing_key=message.function,
            mandatory=True,
            payload=message.payload(),
            available_at=available_at,
        )

    def event(self, type_: str, aggregate_id: uuid.UUID, payload: dict[str, Any]) -> uuid.UUID:
        """An event such as ``job.updated`` for followers of runs."""
        return self._add(
            aggregate_type=type_.split(".", 1)[0],
            aggregate_id=aggregate_id,
            type=type_,
            exchange=EVENTS_EXCHANGE,
            routing_key=type_,
            mandatory=False,
            payload=payload,
            available_at=None,
        )

    def _add(self, *, available_at: datetime | None, **row: Any) -> uuid.UUID:
        row_id = uuid.uuid4()
        row.update(id=row_id, shard=shard_of(self.job_id), attempts=0)
        if available_at is not None:
            row["available_at"] = available_at
        self.rows.append(row)
        return row_id

    def flush(self) -> None:
        """Insert what was collected; call it once, last, in the transaction."""
        immediate = [row for row in self.rows if "available_at" not in row]
        delayed = [row for row in self.rows if "available_at" in row]
        for rows in (immediate, delayed):
            if rows:
                # RETURNING makes SQLAlchemy batch the rows into one cached
                # multi-row INSERT ("insertmanyvalues"): one round trip
                self.session.execute(insert(OUTBOX_TABLE).returning(OUTBOX_TABLE.c.seq), rows)
        self.rows.clear()


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
