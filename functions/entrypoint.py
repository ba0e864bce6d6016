"""The nameko entrypoint that feeds step messages to a function service.

A :class:`StepConsumer` is nameko's queue ``Consumer`` with three changes:
the worker receives the AMQP ``message_id`` (the outbox id, the key of the
inbox) and the headers besides the body; an infrastructure failure requeues
the message after a short pause instead of acking and dropping it (nameko's
default); and a message that is not a step message is rejected to the
dead-letter exchange at once. The
queue's ``x-delivery-limit`` bounds the requeues, then RabbitMQ dead-letters.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import eventlet
from kombu.entity import Exchange, Queue
from nameko.exceptions import ContainerBeingKilled
from nameko.messaging import Consumer

from autostep.exceptions import PoisonMessage
from autostep.settings import get_settings
from autostep.topology import (
    DEAD_EXCHANGE,
    DEAD_QUEUE,
    STEPS_EXCHANGE,
    step_queue_arguments,
    step_queue_name,
)

__all__ = ["StepConsumer", "dead_letter_consumer", "dead_queue", "step_consumer", "step_queue"]

#: Pause before a message whose handling hit an outage goes back to the queue.
REQUEUE_PAUSE_SECONDS = 1.0


class StepConsumer(Consumer):
    """Consumes ``queue`` and passes (body, message_id, headers) to the worker."""

    def __init__(self, queue: Queue, **kwargs: Any) -> None:
        kwargs.setdefault("prefetch_count", get_settings().prefetch_count)
        super().__init__(queue=queue, requeue_on_error=True, **kwargs)

    def handle_message(self, body: Any, message: Any) -> None:
        args = (body, message.properties.get("message_id"), message.headers or {})
        handle_result = partial(self.handle_result, message)

        def spawn_worker() -> None:
            try:
                self.container.spawn_worker(self, args, {}, handle_result=handle_result)
            except ContainerBeingKilled:
                self.consumer.requeue_message(message)

        self.container.spawn_managed_thread(spawn_worker)

    def handle_message_processed(
        self, message: Any, result: Any = None, exc_info: Any = None
    ) -> None:
        if exc_info is None:
            self.consumer.ack_message(message)
        elif isinstance(exc_info[1], PoisonMessage):
            if message.channel.connection:
                message.reject(requeue=False)
        else:
            eventlet.sleep(REQUEUE_PAUSE_SECONDS)
            self.consumer.requeue_message(message)


def step_consumer(function: str) -> Any:
    """Decorate a worker method to receive ``function``'s step messages."""
    return StepConsumer.decorator(step_queue(function))


def dead_letter_consumer() -> Any:
    """Decorate a worker method to receive the dead-lettered messages."""
    return StepConsumer.decorator(dead_queue())


def step_queue(function: str) -> Queue:
    """The kombu queue a runner consumes ``function``'s step messages from."""
    return Queue(
        step_queue_name(function),
        exchange=Exchange(STEPS_EXCHANGE, type="direct", durable=True),
        routing_key=function,
        durable=True,
        queue_arguments=step_queue_arguments(),
    )


def dead_queue() -> Queue:
    """The kombu queue of dead-lettered messages."""
    return Queue(
        DEAD_QUEUE,
        exchange=Exchange(DEAD_EXCHANGE, type="fanout", durable=True),
        routing_key="",
        durable=True,
    )
