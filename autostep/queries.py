"""Read models of runs: jobs with their processes, as plain JSON-ready dicts.

Shared by the gateway's RPC and REST entrypoints and the CLI, so that every
client sees a job the same way (the shape of the ``*.updated`` events).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from autostep.events import job_event, process_event
from autostep.exceptions import NotFoundError
from autostep.models import Job, Process

__all__ = ["job_view", "list_jobs"]


def job_view(session: Session, job_id: uuid.UUID | str) -> dict[str, Any]:
    """The job ``job_id`` with its input, timings and processes in creation order."""
    try:
        key = uuid.UUID(str(job_id))
    except ValueError as exc:
        raise NotFoundError(f"no job {job_id!r}: not a job id") from exc
    job = session.get(Job, key)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    processes = session.scalars(
        select(Process)
        .where(Process.job_id == job.id)
        .order_by(Process.created_at, Process.item_index)
    ).all()
    return {
        **job_event(job),
        "input": job.input,
        "created_at": job.created_at.isoformat(),
        "processes": [process_event(process) for process in processes],
    }


def list_jobs(
    session: Session, workflow_id: uuid.UUID | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The newest jobs, of one workflow if given."""
    query = select(Job).order_by(Job.created_at.desc()).limit(limit)
    if workflow_id is not None:
        query = query.where(Job.workflow_id == workflow_id)
    return [
        {**job_event(job), "created_at": job.created_at.isoformat()}
        for job in session.scalars(query)
    ]
