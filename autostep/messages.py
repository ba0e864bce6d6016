"""The step message: the one contract between the engine and the function runners.

:mod:`autostep.runs` builds a :class:`StepMessage` for every attempt of a
process (a new step, a fan-out child, a retry) and the outbox stores it as the
row's payload; the relay publishes it to ``autostep.steps`` with the row's id
as AMQP ``message_id``; the function runner and the dead-letter service read
it back with :func:`parse_step_message`. It carries everything a runner
needs, so running a step reads no catalog.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from autostep.exceptions import PoisonMessage

__all__ = ["StepMessage", "parse_step_message"]


class StepMessage(BaseModel):
    """Run ``attempt`` of process ``process_id``: ``function`` over ``input``."""

    process_id: uuid.UUID
    job_id: uuid.UUID
    step: str
    function: str
    attempt: int = Field(ge=1)
    input: dict[str, Any]
    #: The step's overrides of the function's retry policy (None: keep the function's).
    policy: dict[str, Any] = Field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The JSON body the outbox stores and the relay publishes."""
        return self.model_dump(mode="json")


def parse_step_message(body: Any, message_id: str | None) -> tuple[StepMessage, uuid.UUID]:
    """The message and its id (the inbox key); :class:`PoisonMessage` if unreadable."""
    try:
        return StepMessage.model_validate(body), uuid.UUID(str(message_id))
    except (ValidationError, ValueError) as exc:
        raise PoisonMessage(f"not a step message: {exc}") from exc
