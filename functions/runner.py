"""Runs one step message: the plain function behind every function service.

The :class:`~autostep.functions.entrypoint.StepConsumer` of each ``fn_<name>``
service hands it the message; the dead-letter service uses its failure path
(:func:`record_failure`) for messages that died.

For a message ``(process_id, attempt, input)`` with AMQP ``message_id``:

1. one transaction: record the message in the inbox and read the process in
   one statement (a duplicate or stale message stops here), call the function with a
   :class:`StepContext` whose session is this transaction, then
   :func:`autostep.runs.complete_process` writes the result, the next processes
   and their outbox rows: the function's own writes, the result and the next
   messages commit together or not at all. A step still running after
   ``running_mark_seconds`` is marked running by a separate short
   transaction, so fast steps cost one commit and the grid still sees slow
   ones run;
2. if the function (or evaluating what comes next) fails: that transaction
   rolls back and another records the failure in the inbox and schedules a
   retry or fails the process and the job;
3. after the commit, the step messages it wrote go to the process's
   :class:`~autostep.dispatch.StepDispatcher`, which publishes them at once
   (their outbox rows are the relay's only if it cannot).

While a function's calls are quick, its messages may instead run several to
a transaction (:mod:`autostep.functions.group`), with the same pieces:
:func:`call_function` and :func:`failure` are shared, and
:func:`groupable` says when, from the function's average call time here.

A crash anywhere before a commit leaves the message unacknowledged, RabbitMQ
redelivers it, and the inbox makes the redelivery a no-op once a commit
happened. The database's own trouble is never a step failure: a deadlock or
a serialization failure runs the message's transaction again at once (up to
:data:`CONFLICT_RETRIES` times, then it counts as an outage); an outage raises
:class:`~autostep.exceptions.DatabaseUnavailable`, and the entrypoint holds
the message until the database answers again. A worker killed while it runs
(a runner that stops) leaves no trace: its transaction rolls back and the
message comes back.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import eventlet
import eventlet.hubs
from eventlet.greenthread import GreenThread
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from autostep import inbox, runs
from autostep.db import (
    DATABASE_OUTAGES,
    database_outages,
    discard_connection,
    side_session_factory,
    unit_of_work,
)
from autostep.dispatch import StepDispatcher
from autostep.exceptions import (
    DatabaseUnavailable,
    NotFoundError,
    PermanentError,
    PoisonMessage,
    RetryableError,
    StaleAttempt,
    TransactionConflict,
)
from autostep.functions.entrypoint import hand_over
from autostep.messages import StepMessage, parse_step_message
from autostep.outbox import dispatch_after_commit
from autostep.sdk import FunctionSpec, RetryPolicy, StepContext
from autostep.settings import get_settings

__all__ = [
    "CONFLICT_RETRIES",
    "StepOutcome",
    "call_function",
    "failure",
    "groupable",
    "record_failure",
    "retry_conflicts",
    "run_step",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Times a message's transaction runs again at once after a deadlock or a
#: serialization failure, before the conflict is treated as an outage.
CONFLICT_RETRIES = 3

#: Weight of the newest call in a function's average duration.
DURATION_WEIGHT = 0.2
#: Average seconds a call of each function took (moving average), in this process.
_TYPICAL_SECONDS: dict[str, float] = {}


def groupable(function: str) -> bool:
    """Whether ``function``'s steps may share a transaction (group commit).

    While group commit is on (``group_commit_size`` above 1) and the
    function's calls in this process take less than
    ``group_commit_fast_seconds`` on average; a function not called yet is not.
    """
    settings = get_settings()
    typical = _TYPICAL_SECONDS.get(function)
    return (
        settings.group_commit_size > 1
        and typical is not None
        and typical < settings.group_commit_fast_seconds
    )


class StepOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    #: A duplicate or stale message: nothing was done.
    SKIPPED = "skipped"


def run_step(
    factory: sessionmaker[Session],
    spec: FunctionSpec,
    body: Any,
    message_id: str | None,
    *,
    consumer: str,
    dispatcher: StepDispatcher | None = None,
    consumed_row: uuid.UUID | None = None,
) -> StepOutcome:
    """Run the step message ``body`` once, exactly once in effect.

    Raises :class:`PoisonMessage` for a message that is unreadable or fits no
    process, and :class:`~autostep.exceptions.DatabaseUnavailable` when the
    database is lost (or its transaction kept conflicting with others).
    With a ``dispatcher``, the step messages the transaction commits are
    published by it right after the commit (the relay publishes them only
    if it cannot); without, by the relay. With ``consumed_row``, the message
    comes straight from that outbox row (run here, without the broker): the
    claim deletes the row in the same transaction.
    """
    message, msg_id = parse_step_message(body, message_id)
    try:
        return retry_conflicts(
            lambda: _run(factory, spec, message, msg_id, consumer, dispatcher, consumed_row),
            f"step {message.step} attempt {message.attempt}",
        )
    except NotFoundError as exc:
        # A runner wired to another database than the relay that published.
        raise PoisonMessage(f"step message for an unknown process: {exc}") from exc


def retry_conflicts(work: Callable[[], T], what: str) -> T:
    """Run the transactions of ``work`` with the database's errors translated.

    After a deadlock or a serialization failure (PostgreSQL rolled the
    transaction back) ``work`` runs again at once, up to
    :data:`CONFLICT_RETRIES` times, with one log line naming ``what``; then
    the conflict counts as an outage: :class:`DatabaseUnavailable`, as when
    the database is lost.
    """
    conflicts = 0
    while True:
        try:
            with database_outages():
                return work()
        except TransactionConflict as exc:
            conflicts += 1
            if conflicts > CONFLICT_RETRIES:
                raise DatabaseUnavailable(
                    f"{what}: transaction still conflicting after {conflicts} tries: {exc}"
                ) from exc
            log.info(
                "%s: %s; running its transaction again (%d of %d)",
                what,
                exc,
                conflicts,
                CONFLICT_RETRIES,
            )


def _run(
    factory: sessionmaker[Session],
    spec: FunctionSpec,
    message: StepMessage,
    message_id: uuid.UUID,
    consumer: str,
    dispatcher: StepDispatcher | None,
    consumed_row: uuid.UUID | None = None,
) -> StepOutcome:
    policy = spec.policy.override(message.policy)
    try:
        with unit_of_work(factory) as session:
            committed_steps = dispatch_after_commit(session) if dispatcher else []
            if not runs.claim_step(
                session,
                consumer,
                message_id,
                message.process_id,
                message.attempt,
                consumed=consumed_row,
            ):
                return StepOutcome.SKIPPED
            started_at = datetime.now(UTC)
            output = call_function(session, spec, message, message_id, policy)
            runs.complete_process(
                session, message.process_id, message.attempt, output, started_at=started_at
            )
        if dispatcher is not None:
            hand_over(committed_steps, dispatcher)
        return StepOutcome.SUCCEEDED
    except StaleAttempt:
        return StepOutcome.SKIPPED
    except DATABASE_OUTAGES:
        raise
    except NotFoundError:
        raise
    except Exception as exc:
        error, retry_in = failure(exc, policy, message)
    return record_failure(factory, consumer, message, message_id, error, retry_in)


def failure(exc: Exception, policy: RetryPolicy, message: StepMessage) -> tuple[str, float | None]:
    """The error of a failed attempt, and seconds until the next (None: it fails for good)."""
    error = f"{type(exc).__name__}: {exc}"
    log.info("step %s attempt %s failed: %s", message.step, message.attempt, error)
    return error, _retry_delay(exc, policy, message.attempt)


def call_function(
    session: Session,
    spec: FunctionSpec,
    message: StepMessage,
    message_id: uuid.UUID,
    policy: RetryPolicy,
) -> dict[str, Any]:
    """Call ``spec``'s function over the message's input in ``session``'s transaction.

    Bounded by the policy's timeout (:class:`RetryableError`; a statement it
    cut short has its connection dropped); a step still running after
    ``running_mark_seconds`` is marked running by a short transaction of
    its own.
    """
    context = StepContext(
        job_id=message.job_id,
        process_id=message.process_id,
        step=message.step,
        attempt=message.attempt,
        session=session,
        extra={"message_id": message_id},
    )
    # a hub timer, not a green thread per step: most steps end long before it is due
    engine = session.get_bind().engine
    marking: list[GreenThread] = []
    timer = eventlet.hubs.get_hub().schedule_call_global(
        get_settings().running_mark_seconds,
        lambda: marking.append(eventlet.spawn(_mark_running, engine, message)),
    )
    timeout = RetryableError(f"timed out after {policy.timeout}s")
    started = time.monotonic()
    try:
        with eventlet.Timeout(policy.timeout, timeout):
            return spec.call(message.input, context)
    except RetryableError as exc:
        if exc is timeout:
            # it may have cut a statement short: the connection is mid-command
            discard_connection(session)
        raise
    finally:
        took = time.monotonic() - started
        typical = _TYPICAL_SECONDS.get(spec.name, took)
        _TYPICAL_SECONDS[spec.name] = typical + DURATION_WEIGHT * (took - typical)
        timer.cancel()  # not due yet: it never runs
        for marker in marking:  # started: let it finish
            # (a kill of this worker while it waits goes on up)
            marker.wait()


def record_failure(
    factory: sessionmaker[Session],
    consumer: str,
    message: StepMessage,
    message_id: uuid.UUID,
    error: str,
    retry_in: float | None,
) -> StepOutcome:
    """Record that ``message``'s attempt failed: retry in ``retry_in`` s, or fail for good.

    One transaction with the inbox row, so a redelivered failure is a no-op.
    """
    with unit_of_work(factory) as session:
        if not inbox.record(session, consumer, message_id):
            return StepOutcome.SKIPPED
        retrying = runs.fail_attempt(session, message.process_id, message.attempt, error, retry_in)
    return StepOutcome.RETRYING if retrying else StepOutcome.FAILED


def _mark_running(engine: Engine, message: StepMessage) -> None:
    """Show a step that is taking a while as running (its own transaction).

    The transaction draws from ``engine``'s side pool (:func:`side_session_factory`).
    """
    try:
        with unit_of_work(side_session_factory(engine)) as session:
            runs.mark_running(session, message.job_id, message.process_id, message.attempt)
    except Exception as exc:  # only a display state: the step goes on regardless
        log.warning(
            "could not mark %s running: %s: %s", message.process_id, type(exc).__name__, exc
        )


def _retry_delay(exc: Exception, policy: RetryPolicy, attempt: int) -> float | None:
    """Seconds until the next attempt, or None when the step fails for good."""
    if isinstance(exc, PermanentError) or attempt > policy.retries:
        return None
    if isinstance(exc, RetryableError) and exc.delay is not None:
        return exc.delay
    return policy.delay(attempt)
