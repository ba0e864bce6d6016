"""The ``deadletters`` service: ends the processes whose messages died.

RabbitMQ dead-letters a step message to ``autostep.dead`` when a runner could
not finish it ``delivery_limit`` times (it crashed, or lost its database
connection while the database answered, each time) or rejected it as
unreadable. Without this service the process would stay queued and its job
running forever. For a step message of a known, unfinished process it fails
the attempt for good, with the death's reason (:func:`death_reason`: e.g.
``delivery_limit on autostep.fn.charge after 11 deliveries``), through the
runner's own failure path (:func:`record_failure`), which fails the job (the
inbox makes a redelivery a no-op). Anything else cannot be tied to a run: it
is logged in one line at ERROR level, in full, and acknowledged (a body that
is not even JSON is logged by the entrypoint). Like the runners, it holds a
message through a database outage. Every function runner process runs one
of these.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from autostep.dependencies import Database
from autostep.exceptions import NotFoundError, PoisonMessage
from autostep.functions.entrypoint import Delivery, dead_letter_consumer, settle
from autostep.functions.runner import record_failure, retry_conflicts
from autostep.messages import parse_step_message
from autostep.settings import get_settings

__all__ = ["DeadLetterService", "death_reason", "handle_dead_letter"]

log = logging.getLogger(__name__)

CONSUMER = "deadletters"


def handle_dead_letter(
    factory: sessionmaker[Session], body: Any, message_id: str | None, reason: str
) -> bool:
    """Fail the process ``body`` was for; False if the message fits no process."""
    try:
        message, msg_id = parse_step_message(body, message_id)
    except PoisonMessage:
        log.error("dead letter that is no step message (%s): %s", reason, _one_line(body))
        return False
    error = f"dead-lettered: {reason}"
    try:
        retry_conflicts(
            lambda: record_failure(factory, CONSUMER, message, msg_id, error, None),
            f"dead letter {msg_id}",
        )
    except NotFoundError:
        log.error("dead letter for an unknown process (%s): %s", reason, _one_line(body))
        return False
    return True


class DeadLetterService:
    """Consumes ``autostep.dead``."""

    name = "deadletters"
    db: sessionmaker[Session] = Database()

    @dead_letter_consumer()
    def handle(self, delivery: Delivery) -> str:
        reason = death_reason(delivery.headers)
        work = partial(handle_dead_letter, self.db, delivery.body, delivery.message_id, reason)
        return str(settle(delivery, work, self.db))


def death_reason(headers: dict[str, Any]) -> str:
    """Why RabbitMQ dead-lettered a message, and after how many deliveries.

    The reason and the queue come from the ``x-death`` header. The count of
    deliveries from ``x-delivery-count`` (the returns before the last
    delivery) where the broker keeps it on the dead letter; RabbitMQ 3.10
    drops it, and a message it dead-letters for its ``delivery_limit`` was
    delivered once more than the limit (the configured
    :attr:`~autostep.settings.Settings.delivery_limit`). A message the runner
    rejected says so in the runner's log, with its id.
    """
    deaths = headers.get("x-death") or []
    if not deaths:
        return "rejected"
    death = deaths[0]
    reason, queue = death.get("reason"), death.get("queue")
    returns = headers.get("x-delivery-count")
    if isinstance(returns, int):
        return f"{reason} on {queue} after {returns + 1} deliveries"
    if reason == "delivery_limit":
        return f"{reason} on {queue} after {get_settings().delivery_limit + 1} deliveries"
    return f"{reason} on {queue}"


def _one_line(body: Any) -> str:
    """``body`` as compact JSON on one line (what is not JSON, as its repr)."""
    return json.dumps(body, default=repr)
