"""Names and declarations of the RabbitMQ exchanges and queues autostep uses.

- ``autostep.steps`` (direct): step messages, routing key = function name,
  each function consuming its own quorum queue ``autostep.fn.<function>``.
  A message redelivered ``delivery_limit`` times (a runner that keeps
  crashing on it) is dead-lettered to ``autostep.dead`` instead of looping.
- ``autostep.events`` (topic): ``job.updated``, ``process.updated``, ...
  for whoever follows runs (the grid, metrics, the scheduler).

The relay declares a step queue before it first publishes to it, so a step
message waits in its queue until a runner for the function starts; the
function runners declare the same queues, with the same arguments, through
kombu (:mod:`autostep.functions.entrypoint`).
"""

from __future__ import annotations

from typing import Any

from autostep.settings import get_settings

__all__ = [
    "DEAD_EXCHANGE",
    "DEAD_QUEUE",
    "EVENTS_EXCHANGE",
    "STEPS_EXCHANGE",
    "declare_base",
    "declare_step_queue",
    "step_queue_arguments",
    "step_queue_name",
]

STEPS_EXCHANGE = "autostep.steps"
EVENTS_EXCHANGE = "autostep.events"
DEAD_EXCHANGE = "autostep.dead"
DEAD_QUEUE = "autostep.dead"


def step_queue_name(function: str) -> str:
    return f"autostep.fn.{function}"


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


def declare_step_queue(channel: Any, function: str) -> None:
    """Declare and bind ``function``'s step queue on a py-amqp channel."""
    name = step_queue_name(function)
    channel.queue_declare(name, durable=True, auto_delete=False, arguments=step_queue_arguments())
    channel.queue_bind(name, STEPS_EXCHANGE, function)
