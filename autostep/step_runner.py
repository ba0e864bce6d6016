"""Runs one step message: the plain function behind every function service.

For a message ``(process_id, attempt, input)`` with AMQP ``message_id``:

1. one transaction: record the message in the inbox and read the process in
   one statement (a duplicate or stale message stops here), call the function with a
   :class:`StepContext` whose session is this transaction, then
   :func:`engine.complete_process` writes the result, the next processes
   and their outbox rows: the function's own writes, the result and the next
   messages commit together or not at all. A step still running after
   ``running_mark_seconds`` is marked running by a separate short
   transaction, so fast steps cost one commit and the grid still sees slow
   ones run;
2. if the function (or evaluating what comes next) fails: that transaction
   rolls back and another records the failure in the inbox and schedules a
   retry or fails the process and the job.

A crash anywhere before a commit leaves the message unacknowledged, RabbitMQ
redelivers it, and the inbox makes the redelivery a no-op once a commit
happened. Database outages are *not* step failures: they raise
:class:`InfrastructureError` and the entrypoint requeues the message.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import eventlet
import psycopg
from greenlet import GreenletExit
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from autostep import engine
from autostep.db import side_session_factory, unit_of_work
from autostep.exceptions import (
    InfrastructureError,
    NotFoundError,
    PermanentError,
    RetryableError,
    StaleAttempt,
)
from autostep.models import Inbox
from autostep.sdk import FunctionSpec, RetryPolicy, StepContext
from autostep.settings import get_settings

__all__ = ["PoisonMessage", "StepMessage", "StepOutcome", "record_inbox", "run_step"]

log = logging.getLogger(__name__)


class StepOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    #: A duplicate or stale message: nothing was done.
    SKIPPED = "skipped"


class PoisonMessage(ValueError):
    """The message cannot be understood; it goes to the dead-letter queue."""


class StepMessage(BaseModel):
    """The body the relay publishes to ``autostep.fn.<function>``."""

    process_id: uuid.UUID
    job_id: uuid.UUID
    step: str
    function: str
    attempt: int = Field(ge=1)
    input: dict[str, Any]
    policy: dict[str, Any] = Field(default_factory=dict)


def run_step(
    factory: sessionmaker[Session],
    spec: FunctionSpec,
    body: Any,
    message_id: str | None,
    *,
    consumer: str,
) -> StepOutcome:
    """Run the step message ``body`` once, exactly once in effect."""
    try:
        message = StepMessage.model_validate(body)
        msg_id = uuid.UUID(str(message_id))
    except (ValidationError, ValueError) as exc:
        raise PoisonMessage(f"not a step message: {exc}") from exc
    try:
        return _run(factory, spec, message, msg_id, consumer)
    except NotFoundError as exc:
        # A runner wired to another database than the relay that published.
        raise PoisonMessage(f"step message for an unknown process: {exc}") from exc
    except (sa_exc.OperationalError, sa_exc.InterfaceError, psycopg.OperationalError) as exc:
        raise InfrastructureError(f"database unavailable: {exc}") from exc


def _run(
    factory: sessionmaker[Session],
    spec: FunctionSpec,
    message: StepMessage,
    message_id: uuid.UUID,
    consumer: str,
) -> StepOutcome:
    policy = spec.policy.override(message.policy)
    try:
        with unit_of_work(factory) as session:
            if not engine.claim_step(
                session, consumer, message_id, message.process_id, message.attempt
            ):
                return StepOutcome.SKIPPED
            context = StepContext(
                job_id=message.job_id,
                process_id=message.process_id,
                step=message.step,
                attempt=message.attempt,
                session=session,
                extra={"message_id": message_id},
            )
            started_at = datetime.now(UTC)
            marker = eventlet.spawn_after(
                get_settings().running_mark_seconds,
                _mark_running,
                side_session_factory(session.get_bind().engine),
                message,
            )
            try:
                timeout = RetryableError(f"timed out after {policy.timeout}s")
                with eventlet.Timeout(policy.timeout, timeout):
                    output = spec.call(message.input, context)
            finally:
                marker.cancel()  # not started yet: it never runs; else let it finish
                with contextlib.suppress(GreenletExit):
                    marker.wait()
            engine.complete_process(
                session, message.process_id, message.attempt, output, started_at=started_at
            )
        return StepOutcome.SUCCEEDED
    except StaleAttempt:
        return StepOutcome.SKIPPED
    except (
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        psycopg.OperationalError,
        NotFoundError,
    ):
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        retry_in = _retry_delay(exc, policy, message.attempt)
        log.info("step %s attempt %s failed: %s", message.step, message.attempt, error)
    with unit_of_work(factory) as session:
        if not record_inbox(session, consumer, message_id):
            return StepOutcome.SKIPPED
        retrying = engine.fail_attempt(
            session, message.process_id, message.attempt, error, retry_in
        )
    return StepOutcome.RETRYING if retrying else StepOutcome.FAILED


def _mark_running(factory: sessionmaker[Session], message: StepMessage) -> None:
    """Show a step that is taking a while as running (its own transaction).

    ``factory`` draws from the side pool (:func:`side_session_factory`).
    """
    try:
        with unit_of_work(factory) as session:
            engine.mark_running(session, message.job_id, message.process_id, message.attempt)
    except Exception:  # only a display state: the step goes on regardless
        log.warning("could not mark %s running", message.process_id, exc_info=True)


def _retry_delay(exc: Exception, policy: RetryPolicy, attempt: int) -> float | None:
    """Seconds until the next attempt, or None when the step fails for good."""
    if isinstance(exc, PermanentError) or attempt > policy.retries:
        return None
    if isinstance(exc, RetryableError) and exc.delay is not None:
        return exc.delay
    return policy.delay(attempt)


def record_inbox(session: Session, consumer: str, message_id: uuid.UUID) -> bool:
    """Insert the message into the inbox; False if it was there already."""
    inserted = session.execute(
        pg_insert(Inbox)
        .values(consumer=consumer, message_id=message_id)
        .on_conflict_do_nothing()
        .returning(Inbox.message_id)
    ).first()
    return inserted is not None
