"""Names and declarations of the RabbitMQ exchanges and queues autostep uses.

- ``autostep.steps`` (direct): step messages, routing key = function name,
  each function consuming its own quorum queue ``autostep.fn.<function>``.
  A message redelivered ``delivery_limit`` times (a runner that keeps
  crashing on it) is dead-lettered to ``autostep.dead`` instead of looping.
- ``autostep.events`` (topic): one message per transaction that changed a
  job or a trigger, holding that transaction's events in order, for whoever
  follows runs (the grid, the scheduler). Routing key
  :data:`JOB_EVENTS` (``job.events``: ``job.updated`` and
  ``process.updated``) or :data:`TRIGGER_EVENTS` (``trigger.events``:
  ``trigger.changed``); the body is a JSON list of ``{"type", "id",
  "payload"}`` (:func:`events_routing_key`).

The relay declares a step queue before it first publishes to it, so a step
message waits in its queue until a runner for the function starts; the
function runners declare the same queues, with the same arguments, through
kombu (:mod:`autostep.functions.entrypoint`).

A queue's arguments are fixed when it is created. When a step queue exists
with other arguments (``AUTOSTEP_DELIVERY_LIMIT`` changed since, say) the
broker refuses the declaration; :func:`declare_step_queue` then logs the
difference and binds the queue as it is. Arguments of existing queues are
changed with a RabbitMQ policy, never by declaring them again.
"""

from __future__ import annotations

import logging
from typing import Any

import amqp

from autostep.settings import get_settings

__all__ = [
    "DEAD_EXCHANGE",
    "DEAD_QUEUE",
    "EVENTS_EXCHANGE",
    "JOB_EVENTS",
    "STEPS_EXCHANGE",
    "TRIGGER_EVENTS",
    "declare_base",
    "declare_step_queue",
    "events_routing_key",
    "step_queue_arguments",
    "step_queue_name",
]

STEPS_EXCHANGE = "autostep.steps"
EVENTS_EXCHANGE = "autostep.events"
DEAD_EXCHANGE = "autostep.dead"
DEAD_QUEUE = "autostep.dead"
#: Routing keys of the events of a job's transactions, and of a trigger's.
JOB_EVENTS = "job.events"
TRIGGER_EVENTS = "trigger.events"

log = logging.getLogger(__name__)


def step_queue_name(function: str) -> str:
    return f"autostep.fn.{function}"


def events_routing_key(aggregate: str) -> str:
    """The routing key of a transaction's events about an ``aggregate`` (``job``, ``trigger``)."""
    return f"{aggregate}.events"


def step_queue_arguments() -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": get_settings().delivery_limit,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
    }


def declare_base(channel: Any) -> None:
    """Declare the exchanges and the dead-letter queue on a py-amqp channel."""
    channel.exchange_declare(STEPS_EXCHANGE, "direct", durable=True, auto_delete=False)
    channel.exchange_declare(EVENTS_EXCHANGE, "topic", durable=True, auto_delete=False)
    channel.exchange_declare(DEAD_EXCHANGE, "fanout", durable=True, auto_delete=False)
    channel.queue_declare(DEAD_QUEUE, durable=True, auto_delete=False)
    channel.queue_bind(DEAD_QUEUE, DEAD_EXCHANGE, "")


def declare_step_queue(channel: Any, function: str) -> Any:
    """Declare and bind ``function``'s step queue on a py-amqp channel; the channel to go on with.

    If the queue exists with other arguments, the broker closes ``channel``
    (``PRECONDITION_FAILED``): this logs one warning that names the queue and
    the difference, checks on a new channel of the same connection that the
    queue is there (a passive declare), binds it as it is, and returns that
    channel. Any other refusal is raised.
    """
    name = step_queue_name(function)
    try:
        channel.queue_declare(
            name, durable=True, auto_delete=False, arguments=step_queue_arguments()
        )
    except amqp.exceptions.PreconditionFailed as exc:
        log.warning(
            "step queue %s exists with other arguments; publishing to it as it is"
            " (change a queue's arguments with a policy): %s",
            name,
            exc.reply_text,
        )
        channel = channel.connection.channel()
        channel.queue_declare(name, passive=True)
    channel.queue_bind(name, STEPS_EXCHANGE, function)
    return channel
