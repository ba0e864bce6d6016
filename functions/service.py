"""Builds one thin nameko service per registered step function.

::

    # mymodule.py
    from autostep import function, services_for

    @function(name="double")
    def double(inp: In) -> Out: ...

    globals().update(services_for(__name__))   # nameko run mymodule

Each service is named ``fn_<function>``, has the :class:`Database` and
:class:`StepDispatch` dependencies (the latter publishes the step messages
its transactions commit, right after the commit) and one
:class:`StepConsumer` entrypoint that delegates to
:func:`autostep.functions.runner.run_step` (through
:func:`~autostep.functions.entrypoint.settle`, which holds the message through
database outages and says whether to ack, dead-letter or requeue it). While
the function's steps are quick, the entrypoint hands over groups of messages
instead, which :func:`autostep.functions.group.run_group` runs in one
transaction (group commit), falling back to one message at a time when a
group's transaction breaks. Its :class:`FunctionRegistration` keeps the
function in the function registry while the service runs, so publishing and
queued steps can tell whether anyone serves it.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from autostep.dependencies import Database, FunctionRegistration, StepDispatch
from autostep.dispatch import StepDispatcher
from autostep.exceptions import NotFoundError, PoisonMessage
from autostep.functions.entrypoint import (
    Delivery,
    DeliveryGroup,
    Disposition,
    LocalStep,
    settle,
    step_consumer,
)
from autostep.functions.group import GroupBroken, StepGroup, run_group
from autostep.functions.runner import groupable, run_step
from autostep.nameko_runtime import configure_from_environment
from autostep.sdk import REGISTRY, FunctionSpec

__all__ = ["service_for", "services_for"]

log = logging.getLogger(__name__)


def service_for(spec: FunctionSpec) -> type:
    """A nameko service class running ``spec``'s step messages."""
    service_name = f"fn_{spec.name.replace('-', '_')}"

    def handle(self: Any, work: Delivery | DeliveryGroup) -> str | list[str]:
        factory: sessionmaker[Session] = self.db
        if isinstance(work, DeliveryGroup):
            return [str(d) for d in _handle_group(factory, spec, work, service_name, self.dispatch)]
        run = partial(
            run_step,
            factory,
            spec,
            work.body,
            work.message_id,
            consumer=service_name,
            dispatcher=self.dispatch,
            consumed_row=work.row_id if isinstance(work, LocalStep) else None,
        )
        return str(settle(work, run, factory))

    namespace = {
        "name": service_name,
        "db": Database(),
        "dispatch": StepDispatch(),
        "registration": FunctionRegistration(spec),
        "handle": step_consumer(spec.name, grouping=partial(groupable, spec.name))(handle),
        "__doc__": f"Runs the step function {spec.name!r}.",
        "__module__": spec.func.__module__,
    }
    return type(f"{_camel(spec.name)}Service", (), namespace)


def _handle_group(
    factory: sessionmaker[Session],
    spec: FunctionSpec,
    group: DeliveryGroup,
    consumer: str,
    dispatcher: StepDispatcher | None,
) -> list[Disposition]:
    """Run the messages ``group`` takes in one transaction; a disposition for each.

    A group whose transaction broke runs each of its messages alone, as a
    single delivery would (:func:`settle` holds it through an outage).
    """

    def source() -> tuple[Any, str | None] | None:
        delivery = group.take()
        return None if delivery is None else (delivery.body, delivery.message_id)

    try:
        outcomes = run_group(
            factory, spec, StepGroup(source), consumer=consumer, dispatcher=dispatcher
        )
    except GroupBroken as exc:
        log.info("a group of %d step(s) runs one by one: %s", len(group.taken), exc)
        return [
            settle(
                delivery,
                partial(
                    run_step,
                    factory,
                    spec,
                    delivery.body,
                    delivery.message_id,
                    consumer=consumer,
                    dispatcher=dispatcher,
                ),
                factory,
            )
            for delivery, _ in group.taken
        ]
    dispositions = []
    for (delivery, _), outcome in zip(group.taken, outcomes, strict=True):
        if isinstance(outcome, PoisonMessage):
            log.warning(
                "dead-lettering message %s from %s: %s",
                delivery.message_id,
                delivery.queue,
                outcome,
            )
            dispositions.append(Disposition.REJECT)
        else:
            dispositions.append(Disposition.ACK)
    return dispositions


def services_for(module: str) -> dict[str, type]:
    """Service classes for the functions defined in ``module``, by class name.

    Imports ``module`` first; :class:`NotFoundError` if it defines no ``@function``.
    """
    __import__(module)
    configure_from_environment()
    specs = [spec for spec in REGISTRY.values() if spec.func.__module__ == module]
    if not specs:
        raise NotFoundError(f"module {module!r} defines no @function")
    services = [service_for(spec) for spec in specs]
    return {service.__name__: service for service in services}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))
