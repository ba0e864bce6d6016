"""Desired state of the Kubernetes backend: every cron trigger, as a :class:`CronTarget`.

Read from the database (:func:`autostep.triggers.cron_targets`) at every
reconciliation, so the cluster follows the triggers table, never a stream of
events that could be lost or reordered.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from autostep.scheduler.cronjobs import CronTarget
from autostep.triggers import cron_targets

__all__ = ["load_targets"]


def load_targets(session: Session) -> list[CronTarget]:
    """Every cron trigger, enabled (a running CronJob) or not (a suspended one)."""
    return [
        CronTarget(
            trigger_id=row.id,
            project_id=row.project_id,
            workflow_id=row.workflow_id,
            trigger_name=row.name,
            schedule=row.schedule,
            time_zone=row.time_zone,
            concurrency=row.concurrency,
            starting_deadline_seconds=row.starting_deadline_seconds,
            enabled=row.enabled,
            version=row.version,
        )
        for row in cron_targets(session)
    ]
