"""Tables of the engine: jobs (runs of a workflow) and their processes.

A :class:`Job` is one execution of a workflow version; a :class:`Process` is
one unit of work inside it: one step run, or the parent of a fan-out whose
children run the step once per item and which completes when all of them have
(the join). ``version`` counts every change of a row and travels in its
``*.updated`` events, so followers can drop stale ones.

The catalog is referenced by id only (no foreign key): this service can move
to its own database later.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from autostep.models.base import Base, created_at_column, new_id

__all__ = ["IdempotencyKey", "Job", "JobStatus", "Process", "ProcessKind", "ProcessStatus"]


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: Someone cancelled the job before it ended.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not JobStatus.RUNNING


class ProcessStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: The job failed elsewhere, or was cancelled, before this process could finish.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED_PROCESS


_FINISHED_PROCESS = {ProcessStatus.SUCCEEDED, ProcessStatus.FAILED, ProcessStatus.CANCELLED}


class ProcessKind(enum.StrEnum):
    TASK = "task"
    #: A fan-out parent: it runs no function, its children do.
    FANOUT = "fanout"


class Job(Base):
    """One run of a workflow version."""

    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_workflow_created", "workflow_id", "created_at"),
        # the running jobs of a trigger: its concurrency policy reads them on every tick
        Index(
            "ix_job_trigger_running",
            "trigger_id",
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    workflow_id: Mapped[uuid.UUID]
    version_id: Mapped[uuid.UUID]
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.RUNNING)
    #: What started the job: "api", "cli", "rpc", "cron", "webhook", ...
    trigger: Mapped[str] = mapped_column(String(50), default="api")
    #: The trigger that started the job, if a trigger did (by id only, like the catalog).
    trigger_id: Mapped[uuid.UUID | None]
    input: Mapped[dict[str, Any]]
    output: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    #: The job this one reruns from its failed step, if it is a rerun.
    rerun_of: Mapped[uuid.UUID | None] = mapped_column(index=True)
    #: Steps entered so far (fan-out children not counted), against the step budget.
    steps: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = created_at_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Process(Base):
    """One unit of work of a job."""

    __tablename__ = "process"
    __table_args__ = (Index("ix_process_job", "job_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("process.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(20), default=ProcessKind.TASK)
    step: Mapped[str] = mapped_column(String(200))
    function: Mapped[str] = mapped_column(String(200))
    #: Position of a fan-out child in its parent's list.
    item_index: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=ProcessStatus.QUEUED)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    input: Mapped[dict[str, Any]]
    output: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    #: Fan-out parents: children not finished yet.
    pending: Mapped[int | None] = mapped_column(Integer)
    #: In a rerun: the original job's process whose committed output this one reuses.
    reused_from: Mapped[uuid.UUID | None]
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = created_at_column()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    """The ``Idempotency-Key`` of a job start: the same key starts one job per workflow."""

    __tablename__ = "idempotency_key"

    workflow_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    #: SHA-256 of the request that first used the key (:mod:`autostep.idempotency`).
    fingerprint: Mapped[str] = mapped_column(String(64))
    #: The job that request started; NULL until it is stored, in the same transaction.
    job_id: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = created_at_column()
