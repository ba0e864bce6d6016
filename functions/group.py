"""Group commit: several step messages of one function in one transaction.

When a function's steps are quick and its messages queue up, a runner pays
for a transaction per step (the begin, the commit and its WAL flush, a
session, a worker) more than for the steps themselves. The function service
then hands a :class:`StepGroup` to :func:`run_group`, which runs the group's
messages in **one** transaction, with the same pieces as :func:`run_step`
for one: the messages ready are claimed in the inbox together (one
statement), their functions called one after another, then the steps
completed. One commit then holds
the effects, results and next messages of every step of the group, and the
messages are acknowledged only after it (the service settles them).

**A failing function costs only itself.** Each function's own writes are
made behind a savepoint, taken lazily, just before the function's first
statement (most functions write nothing, and then no savepoint is taken). A
function that raises has its savepoint rolled back and its ORM objects
dropped, and its failure is recorded in the same transaction, as
:func:`~autostep.functions.runner.record_failure` would: a retry or a failed
step. The other steps of the group commit their effects once. A function
should write through ``ctx.session`` (a statement sent on the driver's
connection directly is not seen, and only a whole-group fallback undoes it).

**Anything else runs the group again one by one.** The database's trouble
(an outage, a conflict), a timeout that cut a statement short, an attempt
overtaken meanwhile, or an error in the completion rolls the whole
transaction back: :class:`GroupBroken` carries the messages taken, and the
service runs each of them alone with :func:`run_step`, as if the group had
never been. Their functions may run a second time, as they may after any
crash before a commit; their effects commit once.

**Bounds.** A group takes the messages ready, in rounds: every message
ready when a round begins, claimed in one statement, then their functions.
It takes at most ``group_commit_size`` messages and no more rounds once it
has run for ``group_commit_seconds``, so a slow step holds back the commit
of at most the steps of its group; it never waits for a message to arrive:
a lone message is a group of one.

**Lock order.** The messages are claimed and their functions called in the
order they came, locking nothing of the engine's (a claim inserts an inbox
row and reads its process); then one statement locks the jobs of all the
group's steps, then their processes, each in id order, and holds them until
the group's commit: every transaction of the engine takes a job's lock
before its processes', and groups take job locks in one order, so they
cannot deadlock each other. The steps that succeeded are then completed
together, in two statements whatever their number; each failure is
recorded after them. A deadlock PostgreSQL detects anyway (with a
function's own rows) breaks the group, and its steps run one by one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from autostep import runs
from autostep.completion import Completion
from autostep.db import DATABASE_OUTAGES, unit_of_work
from autostep.dispatch import StepDispatcher
from autostep.exceptions import PoisonMessage, RetryableError, StaleAttempt
from autostep.functions.entrypoint import hand_over
from autostep.messages import StepMessage, parse_step_message
from autostep.outbox import dispatch_after_commit
from autostep.sdk import FunctionSpec
from autostep.settings import get_settings

from .runner import StepOutcome, call_function, failure

__all__ = ["GroupBroken", "StepGroup", "run_group"]

log = logging.getLogger(__name__)

#: Key of a connection's ``info``: whether a savepoint is wanted before the
#: next statement (``WANTED``), was taken (``TAKEN``), or neither (absent).
_SAVEPOINT = "autostep.group.savepoint"
WANTED, TAKEN = "wanted", "taken"
SAVEPOINT_NAME = "autostep_step"


class GroupBroken(Exception):
    """The group's transaction was rolled back: run its messages one by one."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")


@dataclass
class StepGroup:
    """The messages of one group, taken one at a time from ``source`` while bounds allow.

    ``source`` returns the next message ready (its body and AMQP
    ``message_id``), or None when none is: the group never waits.
    """

    source: Callable[[], tuple[Any, str | None] | None]
    size: int = field(default_factory=lambda: get_settings().group_commit_size)
    seconds: float = field(default_factory=lambda: get_settings().group_commit_seconds)
    taken: int = 0
    started: float = field(default_factory=time.monotonic)

    def next(self) -> tuple[Any, str | None] | None:
        if self.taken >= self.size or time.monotonic() - self.started >= self.seconds:
            return None
        found = self.source()
        if found is not None:
            self.taken += 1
        return found

    def round(self) -> list[tuple[Any, str | None]]:
        """Every message ready now, as far as the bounds allow (none once they are reached)."""
        taken = []
        while (found := self.next()) is not None:
            taken.append(found)
        return taken


def run_group(
    factory: sessionmaker[Session],
    spec: FunctionSpec,
    group: StepGroup,
    *,
    consumer: str,
    dispatcher: StepDispatcher | None = None,
) -> list[StepOutcome | PoisonMessage]:
    """Run the messages of ``group`` in one transaction; what became of each, in order.

    First each message is claimed and its function called, in the order
    they came (nothing of the engine is locked yet); then the steps are
    completed, or their failures recorded, in the order of their job and
    process ids, so that groups lock jobs in one order. A message that is
    not a step message, or fits no process, comes back as its
    :class:`PoisonMessage` (it changed nothing). Raises :class:`GroupBroken`
    when the transaction was rolled back: nothing of the group was
    committed, and its messages are to be run one by one.
    """
    outcomes: list[StepOutcome | PoisonMessage] = []
    try:
        with unit_of_work(factory) as session:
            committed_steps = dispatch_after_commit(session) if dispatcher else []
            called: list[tuple[int, _Called]] = []
            claimed: set[uuid.UUID] = set()
            while taken := group.round():
                for result in _run_round(session, spec, taken, consumer, claimed):
                    if isinstance(result, _Called):
                        called.append((len(outcomes), result))
                        outcomes.append(StepOutcome.SUCCEEDED)  # settled below
                    else:
                        outcomes.append(result)
            for index, outcome in _finish(session, called):
                outcomes[index] = outcome
        if dispatcher is not None:
            hand_over(committed_steps, dispatcher)
    except GroupBroken:
        raise
    except Exception as exc:
        raise GroupBroken(exc) from exc
    return outcomes


def _run_round(
    session: Session,
    spec: FunctionSpec,
    taken: list[tuple[Any, str | None]],
    consumer: str,
    claimed: set[uuid.UUID],
) -> list[_Called | StepOutcome | PoisonMessage]:
    """Claim the messages of a round in one statement, then call their functions in order.

    ``claimed`` holds the message ids the group claimed so far: a message
    taken twice (delivered again meanwhile) is skipped the second time.
    """
    results: list[_Called | StepOutcome | PoisonMessage] = []
    to_claim: list[tuple[int, StepMessage, uuid.UUID]] = []
    for body, raw_id in taken:
        try:
            message, message_id = parse_step_message(body, raw_id)
        except PoisonMessage as exc:
            results.append(exc)
            continue
        if message_id in claimed:
            results.append(StepOutcome.SKIPPED)
            continue
        claimed.add(message_id)
        to_claim.append((len(results), message, message_id))
        results.append(StepOutcome.SKIPPED)  # until claimed
    if not to_claim:
        return results
    runnable = runs.claim_steps(
        session, consumer, [(m_id, m.process_id, m.attempt) for _, m, m_id in to_claim]
    )
    for (index, message, message_id), run in zip(to_claim, runnable, strict=True):
        if run is None:
            results[index] = PoisonMessage(
                f"step message for an unknown process {message.process_id}"
            )
        elif run:
            results[index] = _call(session, spec, message, message_id)
    return results


@dataclass
class _Called:
    """A step whose function ran: its output, or the failure to record."""

    message: StepMessage
    started_at: datetime
    output: dict[str, Any] | None = None
    error: str | None = None
    retry_in: float | None = None


def _call(
    session: Session, spec: FunctionSpec, message: StepMessage, message_id: uuid.UUID
) -> _Called:
    """Call the function of a claimed message, its writes behind a lazy savepoint."""
    policy = spec.policy.override(message.policy)
    called = _Called(message, datetime.now(UTC))
    connection = session.connection()
    connection.info[_SAVEPOINT] = WANTED
    try:
        called.output = call_function(session, spec, message, message_id, policy)
    except BaseException as exc:
        if isinstance(exc, RetryableError) and connection.invalidated:
            raise  # a timeout cut a statement short: the connection is gone, and its transaction
        taken = connection.info.pop(_SAVEPOINT, None) == TAKEN
        if not isinstance(exc, Exception) or isinstance(exc, DATABASE_OUTAGES):
            raise  # the database is lost, or the worker is being killed
        if taken:
            _driver(connection).execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT_NAME}")
        session.expunge_all()  # its objects, changed or new: none of it is written
        called.error, called.retry_in = failure(exc, policy, message)
        return called
    if connection.info.pop(_SAVEPOINT, None) == TAKEN:
        _driver(connection).execute(f"RELEASE SAVEPOINT {SAVEPOINT_NAME}")
    session.flush()  # its new objects: a later failure's expunge must not drop them
    return called


def _finish(session: Session, called: list[tuple[int, _Called]]) -> list[tuple[int, StepOutcome]]:
    """Complete the steps and record the failures; what became of each, by its index.

    One statement locks the jobs, then the processes, of every step, each
    in id order; the steps that succeeded are then written together
    (:func:`autostep.runs.complete_processes`), and each failure recorded
    (the claim's inbox row records either).
    """
    succeeded = [(index, step) for index, step in called if step.error is None]
    failed = [(index, step) for index, step in called if step.error is not None]
    completions = []
    for _, step in succeeded:
        assert step.output is not None
        message = step.message
        completions.append(
            Completion(message.process_id, message.attempt, step.output, step.started_at)
        )
    try:
        runs.complete_processes(
            session, completions, also_lock=[step.message.process_id for _, step in failed]
        )
    except StaleAttempt as exc:  # its function's writes would stay: run the group one by one
        raise GroupBroken(exc) from exc
    outcomes = [(index, StepOutcome.SUCCEEDED) for index, _ in succeeded]
    for index, step in failed:
        message = step.message
        assert step.error is not None
        retrying = runs.fail_attempt(
            session, message.process_id, message.attempt, step.error, step.retry_in
        )
        outcomes.append((index, StepOutcome.RETRYING if retrying else StepOutcome.FAILED))
    session.flush()
    return outcomes


def _driver(connection: Connection) -> Any:
    return connection.connection.driver_connection


@event.listens_for(Connection, "before_cursor_execute")
def _savepoint_before_first_write(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    """Take the group's savepoint before a function's first statement."""
    if conn.info.get(_SAVEPOINT) == WANTED:
        conn.info[_SAVEPOINT] = TAKEN
        cursor.connection.execute(f"SAVEPOINT {SAVEPOINT_NAME}")
