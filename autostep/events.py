"""Payloads of the ``job.updated`` and ``process.updated`` events.

The engine writes one of these to the outbox with every change of a job or a
process; the read models (:mod:`autostep.queries`) show jobs in the same
shape, so the grid can apply an event or a fresh read alike. ``version``
counts the row's changes: a follower keeps the highest it has seen.
``waiting`` says why a queued process waits when no live runner serves its
function (:mod:`autostep.registry`), None otherwise.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy.engine import Row

from autostep.models import Job, Process, ProcessStatus

__all__ = ["JobFields", "ProcessFields", "job_event", "process_event"]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class JobFields(NamedTuple):
    """A job's columns as a read without ORM objects gives them (:mod:`autostep.queries`)."""

    id: uuid.UUID
    workflow_id: uuid.UUID
    version_id: uuid.UUID
    status: str
    trigger: str
    rerun_of: uuid.UUID | None
    steps: int
    output: dict[str, Any] | None
    error: str | None
    version: int
    finished_at: datetime | None
    input: dict[str, Any]
    created_at: datetime


class ProcessFields(NamedTuple):
    """A process's columns as the runner's completion reads them (:mod:`autostep.completion`)."""

    id: uuid.UUID
    job_id: uuid.UUID
    parent_id: uuid.UUID | None
    kind: str
    step: str
    function: str
    item_index: int | None
    status: str
    attempt: int
    error: str | None
    output: dict[str, Any] | None
    reused_from: uuid.UUID | None
    version: int
    started_at: datetime | None
    finished_at: datetime | None


def job_event(job: Job | JobFields) -> dict[str, Any]:
    """The payload of ``job.updated``: the job as the grid shows it."""
    return {
        "id": str(job.id),
        "workflow_id": str(job.workflow_id),
        "version_id": str(job.version_id),
        "status": str(job.status),
        "trigger": job.trigger,
        "rerun_of": str(job.rerun_of) if job.rerun_of else None,
        "steps": job.steps,
        "output": job.output,
        "error": job.error,
        "version": job.version,
        "finished_at": _iso(job.finished_at),
    }


def process_event(
    process: Process | ProcessFields | Row[Any, Any], waiting: str | None = None
) -> dict[str, Any]:
    """The payload of ``process.updated``; ``waiting``: why a queued process waits."""
    finished = ProcessStatus(process.status).finished
    return {
        "id": str(process.id),
        "job_id": str(process.job_id),
        "parent_id": str(process.parent_id) if process.parent_id else None,
        "kind": str(process.kind),
        "step": process.step,
        "function": process.function,
        "item_index": process.item_index,
        "status": str(process.status),
        "attempt": process.attempt,
        "error": process.error,
        "output": process.output if finished else None,
        "reused_from": str(process.reused_from) if process.reused_from else None,
        "version": process.version,
        "started_at": _iso(process.started_at),
        "finished_at": _iso(process.finished_at),
        "waiting": waiting if process.status == ProcessStatus.QUEUED else None,
    }
