"""The ``deadletters`` service: ends the processes whose messages died.

RabbitMQ dead-letters a step message to ``autostep.dead`` when a runner could
not finish it ``delivery_limit`` times (it crashed or lost its database each
time) or rejected it as unreadable. Without this service the process would
stay queued and its job running forever. For a step message of a known,
unfinished process it fails the attempt for good, with the death's reason,
through the runner's own failure path (:func:`record_failure`), which fails
the job (the inbox makes a redelivery a no-op). Anything else
cannot be tied to a run: it is logged in full at ERROR level and acknowledged.
Every function runner process runs one of these.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from autostep.dependencies import Database
from autostep.exceptions import NotFoundError, PoisonMessage
from autostep.functions.entrypoint import dead_letter_consumer
from autostep.functions.runner import record_failure
from autostep.messages import parse_step_message

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
        log.error("dead letter that is no step message (%s): %s", reason, json.dumps(body))
        return False
    try:
        record_failure(factory, CONSUMER, message, msg_id, f"dead-lettered: {reason}", None)
    except NotFoundError:
        log.error("dead letter for an unknown process (%s): %s", reason, json.dumps(body))
        return False
    return True


class DeadLetterService:
    """Consumes ``autostep.dead``."""

    name = "deadletters"
    db: sessionmaker[Session] = Database()

    @dead_letter_consumer()
    def handle(self, body: Any, message_id: str | None, headers: dict[str, Any]) -> bool:
        return handle_dead_letter(self.db, body, message_id, death_reason(headers))


def death_reason(headers: dict[str, Any]) -> str:
    """Why RabbitMQ dead-lettered a message, from its ``x-death`` header."""
    deaths = headers.get("x-death") or []
    if not deaths:
        return "rejected"
    death = deaths[0]
    reason, queue, count = death.get("reason"), death.get("queue"), death.get("count", 1)
    return f"{reason} on {queue} after {count}"
