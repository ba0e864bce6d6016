"""Tables of the messaging layer: the outbox the relay drains and the inbox
consumers deduplicate with.

Outbox columns follow Debezium's event router (``id``, ``aggregate_type``,
``aggregate_id``, ``type``, ``payload``) plus what the relay needs: ``seq``
(commit order within a job, since every writer of a job locks its row
first), ``shard`` (which relay owns the row), ``available_at`` (delayed
retries), ``attempts`` and the lease (``lease_token``, ``lease_until``).
A statement trigger (see the migration) NOTIFYs ``autostep_outbox`` on insert.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Identity, Index, Integer, SmallInteger, String, func
from sqlalchemy.orm import Mapped, mapped_column

from autostep.models.base import Base, created_at_column, new_id

__all__ = ["Inbox", "Outbox"]


class Outbox(Base):
    """A message committed with the business rows it announces."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_shard_seq", "shard", "seq"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)
    aggregate_type: Mapped[str] = mapped_column(String(50))
    aggregate_id: Mapped[uuid.UUID]
    type: Mapped[str] = mapped_column(String(100))
    exchange: Mapped[str] = mapped_column(String(200))
    routing_key: Mapped[str] = mapped_column(String(200))
    #: Whether an unroutable publish is an error (steps) or fine (events).
    mandatory: Mapped[bool] = mapped_column(default=False)
    payload: Mapped[dict[str, Any]]
    shard: Mapped[int] = mapped_column(SmallInteger)
    available_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_token: Mapped[uuid.UUID | None]
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = created_at_column()


class Inbox(Base):
    """Messages a consumer has already applied (its effects committed with this row)."""

    __tablename__ = "inbox"

    consumer: Mapped[str] = mapped_column(String(200), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = created_at_column()
