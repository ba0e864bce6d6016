"""The nameko entrypoint that feeds step messages to a function service.

A :class:`StepConsumer` is nameko's queue ``Consumer``, changed so that the
servers' faults never lose a message, never kill the runner and never use up
a message's deliveries (on a quorum queue every return of a message, by
requeue, reject or a closed channel, counts toward its ``x-delivery-limit``):

- the worker receives a :class:`Delivery` (the body, the AMQP ``message_id``
  that keys the inbox, the headers, the queue, whether the runner is
  stopping) and answers with a :class:`Disposition`: ack it, dead-letter it,
  or give it back. :func:`settle` turns the work's outcome into one, logging
  one line for each expected trouble;
- a database outage keeps the message unacknowledged: :func:`settle` waits
  (backoff up to :data:`OUTAGE_BACKOFF_MAX_SECONDS`) until the database
  answers, then handles the message again, so an outage of minutes costs no
  delivery; only a runner that stops gives the message back;
- a message that cannot be processed (not a step message, an unknown
  process, a body that is not JSON or not UTF-8) is rejected without
  requeue: RabbitMQ dead-letters it to ``autostep.dead``;
- an ack, requeue or reject on a connection the broker dropped logs one line
  instead of killing the container: the broker delivers the message again
  and the inbox absorbs the duplicate.

**Groups.** While its ``grouping`` says so (the function's steps are quick),
a consumer does not start a worker per message: messages wait in a
ready list, and at most ``group_commit_workers`` workers each receive a
:class:`DeliveryGroup`, take messages from the list one at a time while the
group's bounds allow, and answer with a :class:`Disposition` for each
message taken, which are settled then (after the group's commit). A worker
that finds more messages ready when it ends starts the next group; one
never waits for a message to arrive.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import eventlet
from amqp.exceptions import AMQPError
from kombu.entity import Exchange, Queue
from nameko.amqp.consume import Consumer as ConsumerCore
from nameko.exceptions import ContainerBeingKilled
from nameko.messaging import Consumer
from sqlalchemy.orm import Session, sessionmaker

from autostep.db import database_answers
from autostep.exceptions import DatabaseUnavailable, PoisonMessage
from autostep.settings import get_settings
from autostep.socket_writes import corked
from autostep.topology import (
    DEAD_EXCHANGE,
    DEAD_QUEUE,
    STEPS_EXCHANGE,
    declare_base,
    declare_step_queue,
    step_queue_arguments,
    step_queue_name,
)

__all__ = [
    "Delivery",
    "DeliveryGroup",
    "Disposition",
    "LocalStep",
    "StepConsumer",
    "StepQueueConsumer",
    "dead_letter_consumer",
    "dead_queue",
    "hand_over",
    "settle",
    "step_consumer",
    "step_queue",
]

log = logging.getLogger(__name__)

#: Pause before a message whose handling failed unexpectedly goes back to the queue.
REQUEUE_PAUSE_SECONDS = 1.0
#: Backoff between checks of a database that does not answer: first, and longest.
OUTAGE_BACKOFF_SECONDS = 0.5
OUTAGE_BACKOFF_MAX_SECONDS = 5.0
#: Times a message is handled again at once when it lost its database
#: connection while the database answers (a connection dropped by the server,
#: a stale pooled one) before it goes back to the queue.
LOST_CONNECTION_RETRIES = 2
#: Slice of a pause after which a worker checks whether the runner is stopping.
STOP_CHECK_SECONDS = 0.1

#: What the broker raises when its connection is gone: the socket's own errors
#: (``ConnectionResetError``, ``BrokenPipeError``) and py-amqp's.
_BROKER_CONNECTION_ERRORS: tuple[type[Exception], ...] = (OSError, AMQPError)


class Disposition(enum.StrEnum):
    """What becomes of a message once its worker is done with it."""

    #: Handled (or a duplicate): remove it from the queue.
    ACK = "ack"
    #: It cannot be processed: reject it without requeue (dead-lettered).
    REJECT = "reject"
    #: Not handled now: give it back to the queue (this counts as a delivery).
    REQUEUE = "requeue"


@dataclass(frozen=True)
class Delivery:
    """One message as a worker receives it."""

    body: Any
    message_id: str | None
    headers: dict[str, Any]
    queue: str
    #: Whether the runner is stopping (then a held message is given back).
    stopping: Callable[[], bool]


@dataclass(frozen=True)
class LocalStep(Delivery):
    """A step message this process runs itself, straight from its outbox row.

    ``message_id`` is the row's id, as the broker would have delivered it;
    the run's claim deletes the row (see :func:`hand_over`).
    """

    row_id: uuid.UUID


@dataclass
class DeliveryGroup:
    """Messages a worker takes one at a time from its consumer's ready list."""

    ready: deque[tuple[Delivery, Any]]
    #: What was taken, in order: (the delivery, kombu's message).
    taken: list[tuple[Delivery, Any]] = field(default_factory=list)

    def take(self) -> Delivery | None:
        """The next message ready, or None: a group never waits for one."""
        if not self.ready:
            return None
        found = self.ready.popleft()
        self.taken.append(found)
        return found[0]


class _OutageLog:
    """One log line when the database is lost and one when it answers, per process."""

    def __init__(self) -> None:
        self.since: float | None = None

    def lost(self, error: str) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s; holding messages unacknowledged until it answers", error)

    def answered(self) -> None:
        if self.since is not None:
            log.warning(
                "database answers again after %.1f s; handling the held messages",
                time.monotonic() - self.since,
            )
            self.since = None


_OUTAGE = _OutageLog()


def settle(
    delivery: Delivery, work: Callable[[], object], factory: sessionmaker[Session]
) -> Disposition:
    """Run ``work`` for ``delivery``; what to do with the message afterwards.

    :class:`PoisonMessage` rejects it. :class:`DatabaseUnavailable` while the
    database does not answer holds it: ``work`` runs again once the database
    at ``factory``'s engine answers, however long that takes, unless the
    runner stops. When the database answers although ``work`` lost it, ``work``
    runs again :data:`LOST_CONNECTION_RETRIES` times, then the message goes
    back to the queue (a delivery: a message that always loses its
    connection is dead-lettered in the end). Any other exception propagates:
    it is unexpected.
    """
    url = factory.kw["bind"].url.render_as_string(hide_password=False)
    lost_while_answering = 0
    while True:
        try:
            work()
        except PoisonMessage as exc:
            log.warning(
                "dead-lettering message %s from %s: %s", delivery.message_id, delivery.queue, exc
            )
            return Disposition.REJECT
        except DatabaseUnavailable as exc:
            if delivery.stopping():
                return _give_back(delivery, exc)
            if database_answers(url):
                lost_while_answering += 1
                if lost_while_answering > LOST_CONNECTION_RETRIES:
                    log.warning(
                        "message %s from %s lost its database connection %d times while the"
                        " database answers; giving it back to the queue: %s",
                        delivery.message_id,
                        delivery.queue,
                        lost_while_answering,
                        exc,
                    )
                    return Disposition.REQUEUE
                log.info(
                    "message %s from %s lost its database connection; handling it again: %s",
                    delivery.message_id,
                    delivery.queue,
                    exc,
                )
                continue
            _OUTAGE.lost(str(exc))
            if not _wait_for_database(url, delivery):
                return _give_back(delivery, exc)
            _OUTAGE.answered()
        else:
            return Disposition.ACK


def _wait_for_database(url: str, delivery: Delivery) -> bool:
    """Wait until the database answers (True) or the runner stops (False)."""
    delay = OUTAGE_BACKOFF_SECONDS
    while True:
        if not _pause(delay, delivery.stopping):
            return False
        if database_answers(url):
            return True
        delay = min(delay * 2, OUTAGE_BACKOFF_MAX_SECONDS)


def _pause(seconds: float, stopping: Callable[[], bool]) -> bool:
    """Sleep ``seconds``; False as soon as the runner is stopping."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stopping():
            return False
        eventlet.sleep(min(left, STOP_CHECK_SECONDS))
    return not stopping()


def _give_back(delivery: Delivery, exc: Exception) -> Disposition:
    log.info(
        "runner stopping: giving message %s back to %s (%s)",
        delivery.message_id,
        delivery.queue,
        exc,
    )
    return Disposition.REQUEUE


class StepQueueConsumer(ConsumerCore):
    """nameko's kombu consumer with settlements that survive a dropped connection.

    A body kombu cannot decode (not JSON, not UTF-8, another content type)
    is rejected without requeue (dead-lettered) on a step queue, and
    acknowledged on the dead-letter queue, with one log line either way.
    """

    #: Whether this queue dead-letters what it rejects (step queues do).
    dead_letters = True

    def get_consumers(self, consumer_cls: Any, channel: Any) -> Any:
        """Declare the step queue (after every connect), then consume it.

        The declaration is :func:`autostep.topology.declare_step_queue`'s, on
        a channel of its own: a queue that exists with other arguments (a
        changed ``AUTOSTEP_DELIVERY_LIMIT``) is consumed as it is, with one
        warning, instead of failing every reconnect. kombu itself declares
        nothing for step queues (``no_declare``).
        """
        if self.dead_letters:
            side = channel.connection.channel()
            try:
                declare_base(side)
                side = declare_step_queue(side, self.queues[0].routing_key)
            finally:
                side.close()
        return super().get_consumers(consumer_cls, channel)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        queue = self.queues[0].name
        message_id = message.properties.get("message_id")
        if self.dead_letters:
            log.warning("dead-lettering undecodable message %s from %s: %s", message_id, queue, exc)
            self.reject_message(message)
        else:
            log.error(
                "dropping undecodable dead letter %s from %s: %s (%d bytes)",
                message_id,
                queue,
                exc,
                len(message.body or b""),
            )
            self.ack_message(message)

    def run(self, _tokens: int = 1, **kwargs: Any) -> None:
        """Consume until stopped, reconnecting (kombu's loop, with a one-line log)."""
        while not self.should_stop:
            try:
                if self.restart_limit.can_consume(_tokens):
                    for _ in self.consume(limit=None, **kwargs):
                        pass
                else:
                    eventlet.sleep(self.restart_limit.expected_time(_tokens))
            except self._connection_errors as exc:
                log.warning(
                    "connection to the broker lost while consuming %s (%s: %s); reconnecting",
                    self.queues[0].name,
                    type(exc).__name__,
                    exc,
                )

    def on_connection_error(self, exc: Exception, interval: float) -> None:
        log.warning(
            "cannot connect to the broker for %s (%s); retrying in %s s",
            self.queues[0].name,
            exc,
            interval,
        )

    @cached_property
    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        connection = self.connection
        return tuple(connection.connection_errors + connection.channel_errors)

    def ack_message(self, message: Any) -> None:
        _settle_safely(message, "ack", message.ack)

    def requeue_message(self, message: Any) -> None:
        _settle_safely(message, "requeue", message.requeue)

    def reject_message(self, message: Any) -> None:
        _settle_safely(message, "reject", partial(message.reject, requeue=False))


def _settle_safely(message: Any, action: str, settle_message: Callable[[], None]) -> None:
    """Ack, requeue or reject ``message``; one log line if the connection is gone.

    The broker takes back what an unsettled message of a closed channel
    holds, and delivers it again.
    """
    if not message.channel.connection:
        log.info(
            "could not %s message %s: its channel is closed (it will be delivered again)",
            action,
            message.properties.get("message_id"),
        )
        return
    try:
        settle_message()
    except _BROKER_CONNECTION_ERRORS as exc:
        log.warning(
            "could not %s message %s: %s: %s (it will be delivered again)",
            action,
            message.properties.get("message_id"),
            type(exc).__name__,
            exc,
        )


@contextlib.contextmanager
def _settled_together(messages: list[Any]) -> Iterator[None]:
    """Send the settlements of the block's ``messages`` in one socket write.

    The messages of a group came on one channel; their acks leave together
    (:func:`~autostep.socket_writes.corked`). A connection lost meanwhile
    logs one line, as :func:`_settle_safely` does for one message.
    """
    connection = messages[0].channel.connection if messages else None
    transport = getattr(connection, "transport", None)
    if transport is None:  # gone: each settlement says so
        yield
        return
    try:
        with corked(transport):
            yield
    except _BROKER_CONNECTION_ERRORS as lost:
        log.warning(
            "could not settle %d messages: %s: %s (they will be delivered again)",
            len(messages),
            type(lost).__name__,
            lost,
        )


class StepConsumer(Consumer):
    """Consumes ``queue`` and passes a :class:`Delivery` to the worker.

    The worker returns a :class:`Disposition`; an exception it raises (an
    unexpected one: nameko logs its traceback) requeues the message after
    :data:`REQUEUE_PAUSE_SECONDS`.
    """

    consumer_cls = StepQueueConsumer

    def __init__(
        self,
        queue: Queue,
        *,
        dead_letters: bool = True,
        grouping: Callable[[], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("prefetch_count", get_settings().prefetch_count)
        super().__init__(queue=queue, requeue_on_error=True, **kwargs)
        self.dead_letters = dead_letters
        self.grouping = grouping
        self.stopping = False
        self.ready: deque[tuple[Delivery, Any]] = deque()
        self.groups_running = 0
        #: Groups run, the messages they held, and the most one held.
        self.groups = 0
        self.grouped = 0
        self.largest_group = 0
        #: Messages delivered and not settled yet.
        self.held = 0
        #: Steps running here straight from their outbox rows (:meth:`run_here`).
        self.local_running = 0
        self.ran_here = 0

    def setup(self) -> None:
        super().setup()
        self.consumer.dead_letters = self.dead_letters

    def start(self) -> None:
        self.stopping = False
        super().start()
        if self.dead_letters:  # a step queue: this process serves its function
            _LOCAL[self.queue.routing_key] = self

    def _leave(self) -> None:
        self.stopping = True
        if _LOCAL.get(self.queue.routing_key) is self:
            del _LOCAL[self.queue.routing_key]

    def stop(self) -> None:
        self._leave()
        if self.groups:
            log.info(
                "%s: %d messages ran in %d groups (group commit), at most %d in one",
                self.queue.name,
                self.grouped,
                self.groups,
                self.largest_group,
            )
        super().stop()

    def kill(self) -> None:
        self._leave()
        super().kill()

    def handle_message(self, body: Any, message: Any) -> None:
        delivery = Delivery(
            body=body,
            message_id=message.properties.get("message_id"),
            headers=message.headers or {},
            queue=self.queue.name,
            stopping=lambda: self.stopping,
        )
        self.held += 1
        if self.grouping is not None and (self.ready or self.grouping()):
            self.ready.append((delivery, message))
            self._start_group()
            return
        handle_result = partial(self.handle_result, message)

        def spawn_worker() -> None:
            try:
                self.container.spawn_worker(self, (delivery,), {}, handle_result=handle_result)
            except ContainerBeingKilled:
                self.held -= 1
                self.consumer.requeue_message(message)

        self.container.spawn_managed_thread(spawn_worker)

    def run_here(self, row: dict[str, Any]) -> bool:
        """Run the step message of outbox ``row`` in a worker here, if this consumer is free.

        Free: not stopping, holding no message of its queue but the one
        whose transaction wrote ``row`` (a busy runner leaves the step to the
        broker, where the runners share it and groups form), and fewer than
        ``eager_steps`` steps running here this way. False: the caller has
        the row published instead.
        """
        busy = self.held > 1 or self.local_running >= get_settings().eager_steps
        if self.stopping or busy:
            return False
        self.local_running += 1
        self.ran_here += 1
        row_id = uuid.UUID(str(row["id"]))
        step = LocalStep(
            body=row["payload"],
            message_id=str(row_id),
            headers={},
            queue=self.queue.name,
            stopping=lambda: self.stopping,
            row_id=row_id,
        )

        def spawn_worker() -> None:
            try:
                self.container.spawn_worker(self, (step,), {}, handle_result=self._ran_here)
            except ContainerBeingKilled:
                self.local_running -= 1  # its row is the relay's after the grace

        self.container.spawn_managed_thread(spawn_worker)
        return True

    def _ran_here(self, worker_ctx: Any, result: Any = None, exc_info: Any = None) -> Any:
        # No broker message to settle: a step that did not commit leaves its
        # row in the outbox, published by the relay once the grace has passed.
        self.local_running -= 1
        return result, exc_info

    def _start_group(self) -> None:
        """Start a group worker if messages are ready and fewer than the most run."""
        if not self.ready or self.groups_running >= get_settings().group_commit_workers:
            return
        self.groups_running += 1
        group = DeliveryGroup(self.ready)

        def spawn_worker() -> None:
            try:
                self.container.spawn_worker(
                    self, (group,), {}, handle_result=partial(self._group_processed, group)
                )
            except ContainerBeingKilled:
                self.groups_running -= 1  # what is ready is delivered again after the kill

        self.container.spawn_managed_thread(spawn_worker)

    def _group_processed(
        self, group: DeliveryGroup, worker_ctx: Any, result: Any = None, exc_info: Any = None
    ) -> tuple[Any, Any]:
        self.groups_running -= 1
        if group.taken:
            self.groups += 1
            self.grouped += len(group.taken)
            self.largest_group = max(self.largest_group, len(group.taken))
        if exc_info is not None:  # unexpected (nameko logged it): requeue after a pause
            if not self.stopping:
                eventlet.sleep(REQUEUE_PAUSE_SECONDS)
            for _, message in group.taken:
                self.held -= 1
                self.consumer.requeue_message(message)
        else:
            with _settled_together([message for _, message in group.taken]):
                for (_, message), disposition in zip(group.taken, result, strict=True):
                    self.handle_message_processed(message, disposition)
        if not self.stopping:
            self._start_group()
        return result, exc_info

    def handle_message_processed(
        self, message: Any, result: Any = None, exc_info: Any = None
    ) -> None:
        self.held -= 1
        if exc_info is not None:
            if not self.stopping:
                eventlet.sleep(REQUEUE_PAUSE_SECONDS)
            self.consumer.requeue_message(message)
        elif result == Disposition.REJECT:
            self.consumer.reject_message(message)
        elif result == Disposition.REQUEUE:
            self.consumer.requeue_message(message)
        else:
            self.consumer.ack_message(message)


#: The step consumers of this process, by the function they serve.
_LOCAL: dict[str, StepConsumer] = {}


def hand_over(rows: list[dict[str, Any]], dispatcher: Any) -> None:
    """After a commit, send on the step rows it wrote (see :mod:`autostep.dispatch`).

    The lone next step of a chain runs here at once, straight from its row,
    when this process serves its function and that consumer is free
    (:meth:`StepConsumer.run_here`): no publish, no delivery. Anything
    else goes to ``dispatcher`` (a
    :class:`~autostep.dispatch.StepDispatcher`), which publishes it. Either
    way the row stays in the outbox until the step's claim, or the
    dispatcher, deletes it, so the relay publishes it after the grace if
    this process dies first.
    """
    if len(rows) == 1:
        consumer = _LOCAL.get(rows[0]["routing_key"])
        if consumer is not None and consumer.run_here(rows[0]):
            return
    dispatcher.send(rows)


def step_consumer(function: str, grouping: Callable[[], bool] | None = None) -> Any:
    """Decorate a worker method to receive ``function``'s step messages.

    With ``grouping``, the method receives a :class:`DeliveryGroup` instead
    of a :class:`Delivery` while ``grouping()`` is true, and answers with a
    disposition for each message the group took.
    """
    return StepConsumer.decorator(step_queue(function), grouping=grouping)


def dead_letter_consumer() -> Any:
    """Decorate a worker method to receive the dead-lettered messages."""
    return StepConsumer.decorator(dead_queue(), dead_letters=False)


def step_queue(function: str) -> Queue:
    """The kombu queue a runner consumes ``function``'s step messages from."""
    return Queue(
        step_queue_name(function),
        exchange=Exchange(STEPS_EXCHANGE, type="direct", durable=True),
        routing_key=function,
        durable=True,
        queue_arguments=step_queue_arguments(),
        # declared by StepQueueConsumer.get_consumers, which accepts other arguments
        no_declare=True,
    )


def dead_queue() -> Queue:
    """The kombu queue of dead-lettered messages."""
    return Queue(
        DEAD_QUEUE,
        exchange=Exchange(DEAD_EXCHANGE, type="fanout", durable=True),
        routing_key="",
        durable=True,
    )
