"""Tables of triggers: what starts runs on its own, and the ticks it fired.

A :class:`Trigger` belongs to one workflow and has a ``kind`` (``cron``,
``webhook``, ``manual``; :mod:`autostep.trigger_kinds` validates its
``config``). ``version`` counts its changes and travels in its
``trigger.changed`` events, so followers (the scheduler) keep the newest.

A :class:`TriggerTick` records what one scheduled time of a cron trigger
did: its primary key (trigger, scheduled time) is what makes every tick fire
at most once, however often Kubernetes or a retry runs ``autostep fire``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from autostep.models.base import Base, created_at_column, new_id

__all__ = ["TickOutcome", "Trigger", "TriggerTick"]


class TickOutcome(enum.StrEnum):
    #: The tick started a job (``job_id``).
    STARTED = "started"
    #: The tick started nothing; ``reason`` says why.
    SKIPPED = "skipped"


class Trigger(Base):
    """Something that starts runs of a workflow: a schedule, a webhook, a button."""

    __tablename__ = "trigger"
    __table_args__ = (UniqueConstraint("workflow_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    workflow_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workflow.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(50))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    config: Mapped[dict[str, Any]]
    #: CEL giving the job's input; NULL: the trigger's natural payload.
    input_template: Mapped[str | None] = mapped_column(Text)
    #: Webhooks: SHA-256 (hex) of the token callers send; the token itself is never stored.
    token_hash: Mapped[str | None] = mapped_column(String(64))
    #: Cron: ticks at or before this time are never caught up (set when the
    #: trigger is created, enabled again, or its schedule changes).
    active_since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = created_at_column()


class TriggerTick(Base):
    """What one scheduled time of a cron trigger did."""

    __tablename__ = "trigger_tick"

    trigger_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("trigger.id", ondelete="CASCADE"), primary_key=True
    )
    scheduled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = created_at_column()
