"""The ``scheduler`` nameko service: keeps the cluster's CronJobs in line with the cron triggers.

Thin: on every ``trigger.changed`` event (published by the relay on the
``autostep.events`` topic exchange, routing key ``trigger.events``, from the
outbox row each trigger write commits) and every
``AUTOSTEP_SCHEDULER_RESYNC_SECONDS`` (default 60), it
reads all cron triggers (:func:`autostep.triggers.cron_targets`)
and reconciles them with the namespace's CronJobs
(:func:`autostep.scheduler.reconcile.reconcile`). Each run is a full one, so
a lost or reordered event costs nothing but the wait for the next resync.

The events queue ``autostep.scheduler.triggers`` is shared by the
scheduler's replicas; any one of them reconciling is enough.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.entity import Exchange, Queue
from nameko.messaging import consume
from nameko.timer import timer
from sqlalchemy.orm import Session, sessionmaker

from autostep.db import unit_of_work
from autostep.dependencies import Database
from autostep.exceptions import InfrastructureError
from autostep.scheduler.cronjobs import desired_cronjob
from autostep.scheduler.kube import KubeClient
from autostep.scheduler.reconcile import Summary, reconcile
from autostep.settings import get_settings
from autostep.topology import EVENTS_EXCHANGE, TRIGGER_EVENTS
from autostep.triggers import cron_targets

__all__ = ["TRIGGER_EVENTS_QUEUE", "SchedulerService", "sync"]

log = logging.getLogger(__name__)
TRIGGER_EVENTS_QUEUE = Queue(
    "autostep.scheduler.triggers",
    Exchange(EVENTS_EXCHANGE, type="topic", durable=True),
    routing_key=TRIGGER_EVENTS,
    durable=True,
)
_clients: dict[str, KubeClient] = {}


def _client() -> KubeClient:
    """One client per process, for the cluster the environment points at."""
    if "default" not in _clients:
        _clients["default"] = KubeClient.connect(get_settings().scheduler_kube_host or None)
    return _clients["default"]


def sync(factory: sessionmaker[Session], client: KubeClient) -> Summary:
    """Reconcile every cron trigger with the CronJobs of the scheduler's namespace."""
    settings = get_settings()
    with unit_of_work(factory) as session:
        targets = cron_targets(session)
    desired = [desired_cronjob(target, settings) for target in targets]
    summary = reconcile(client, desired, settings.scheduler_namespace)
    if summary.writes or summary.failed:
        log.info("scheduler: %s", summary)
    return summary


class SchedulerService:
    name = "scheduler"
    db = Database()

    @consume(TRIGGER_EVENTS_QUEUE)
    def on_trigger_changed(self, body: Any) -> None:
        self._sync()

    @timer(interval=get_settings().scheduler_resync_seconds)
    def resync(self) -> None:
        self._sync()

    def _sync(self) -> None:
        try:
            sync(self.db, _client())
        except InfrastructureError as exc:
            log.warning("scheduler: reconciliation put off until the next resync: %s", exc)
