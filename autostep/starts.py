"""Starting runs in one write statement, however many: the engine's start path.

:func:`autostep.runs.start_job` (one run: the API, the CLI, webhooks, a
manual or cron trigger fired alone) and :func:`autostep.tick_batch.fire_ticks`
(the cron ticks due in one pass) build their runs here. Inside the caller's
transaction, with the version already chosen and its workflow share-locked
(:func:`autostep.catalog.lock_start_version`):

1. :meth:`NewRuns.add` builds a run in Python: the job, its first process,
   the step message and the events, with the builders every run and step
   uses (:mod:`autostep.completion`, :mod:`autostep.outbox`); a run whose
   input cannot be evaluated raises before anything is collected;
2. :meth:`NewRuns.write` inserts every collected job, process and outbox row
   in one statement (:data:`INSERT_JOBS` with the completion's CTEs), which a
   caller with more to write (the ticks' outcomes) extends with its own.

A start step that fans out is not built here: the caller takes the ORM path
of :mod:`autostep.runs` for it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy.orm import Session

from autostep import registry
from autostep.catalog import CompiledVersion
from autostep.completion import (
    INSERT_BORN,
    INSERT_SENT,
    check_budget,
    compact_json,
    new_job,
    new_task,
    step_input,
    step_message,
    task_row,
)
from autostep.db import driver
from autostep.events import JobFields, job_event, process_event
from autostep.outbox import OutboxWriter

__all__ = ["INSERT_JOBS", "NewRuns", "fans_out"]

#: A CTE that inserts the jobs of the JSON array ``%(jobs)s`` (``created_at``: the
#: database's clock, as for every row).
INSERT_JOBS = """jobs AS (
    INSERT INTO job (id, workflow_id, version_id, status, trigger, trigger_id, input, steps,
                     version)
    SELECT r.id, r.workflow_id, r.version_id, r.status, r.trigger, r.trigger_id, r.input,
           r.steps, r.version
    FROM jsonb_to_recordset(%(jobs)s) AS r(
        id uuid, workflow_id uuid, version_id uuid, status text, trigger text,
        trigger_id uuid, input jsonb, steps int, version int))"""
_WRITE = f"""
WITH {INSERT_JOBS},
{INSERT_BORN},
{INSERT_SENT}
SELECT 1
"""


def fans_out(version: CompiledVersion) -> bool:
    """Whether the start step of ``version`` fans out (the ORM path starts such runs)."""
    return version.step(version.start_step).for_each is not None


@dataclass
class NewRuns:
    """The rows of the runs started in one transaction, as :meth:`add` builds them."""

    session: Session
    jobs: list[dict[str, Any]] = field(default_factory=list)
    born: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    #: Why a queued step of each function waits (None: a live runner serves it), read once.
    waiting: dict[str, str | None] = field(default_factory=dict)

    def add(
        self,
        version: CompiledVersion,
        trigger: str,
        job_input: dict[str, Any],
        *,
        trigger_id: uuid.UUID | None = None,
    ) -> JobFields:
        """Build a run of ``version`` with the checked ``job_input``; the job as started.

        :class:`~autostep.exceptions.PermanentError` when the start step's
        input cannot be evaluated (nothing is collected then). The start step
        must not fan out (:func:`fans_out`).
        """
        check_budget(0, version)
        step = version.step(version.start_step)
        assert step.for_each is None, "a start step that fans out takes the ORM path"
        data = step_input(step, version.field(step.name), job_input, None)
        job = new_job(version.workflow_id, version.id, trigger, job_input)
        task = new_task(job.id, step, data)
        if step.function not in self.waiting:
            self.waiting[step.function] = registry.waiting_reason(self.session, step.function)
        out = OutboxWriter(self.session, job.id)
        out.event("job.updated", job.id, job_event(job))
        out.event("process.updated", task.id, process_event(task, self.waiting[step.function]))
        out.step(step_message(task, data, step.policy()))
        started = job._replace(steps=1)  # the start step entered
        self.jobs.append(
            {
                "id": str(job.id),
                "workflow_id": str(job.workflow_id),
                "version_id": str(job.version_id),
                "status": str(job.status),
                "trigger": job.trigger,
                "trigger_id": str(trigger_id) if trigger_id is not None else None,
                "input": job.input,
                "steps": started.steps,
                "version": job.version,
            }
        )
        self.born.append(task_row(task, data))
        self.outbox += out.take()
        return started

    def params(self) -> dict[str, Any]:
        """The parameters of :data:`INSERT_JOBS`, ``INSERT_BORN`` and ``INSERT_SENT``."""
        return {
            "jobs": Jsonb(self.jobs, dumps=compact_json),
            "born": Jsonb(self.born, dumps=compact_json),
            "outbox": Jsonb(self.outbox, dumps=compact_json),
        }

    def write(self) -> None:
        """Insert what was built, in one statement."""
        if not self.jobs:
            return
        with driver(self.session).cursor() as cursor:
            cursor.execute(_WRITE, self.params(), prepare=True)
