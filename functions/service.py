"""Builds one thin nameko service per registered step function.

::

    # mymodule.py
    from autostep import function, services_for

    @function(name="double")
    def double(inp: In) -> Out: ...

    globals().update(services_for(__name__))   # nameko run mymodule

Each service is named ``fn_<function>``, has the :class:`Database` and
:class:`StepDispatch` dependencies (the latter publishes the step messages
its transactions commit, right after the commit) and one :class:`StepConsumer` entrypoint that delegates to
:func:`autostep.functions.runner.run_step` (through
:func:`~autostep.functions.entrypoint.settle`, which holds the message through
database outages and says whether to ack, dead-letter or requeue it). Its
:class:`FunctionRegistration` keeps the function in the function registry
while the service runs, so publishing and queued steps can tell whether
anyone serves it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from autostep.dependencies import Database, FunctionRegistration, StepDispatch
from autostep.exceptions import NotFoundError
from autostep.functions.entrypoint import Delivery, settle, step_consumer
from autostep.functions.runner import run_step
from autostep.nameko_runtime import configure_from_environment
from autostep.sdk import REGISTRY, FunctionSpec

__all__ = ["service_for", "services_for"]


def service_for(spec: FunctionSpec) -> type:
    """A nameko service class running ``spec``'s step messages."""
    service_name = f"fn_{spec.name.replace('-', '_')}"

    def handle(self: Any, delivery: Delivery) -> str:
        factory: sessionmaker[Session] = self.db
        work = partial(
            run_step,
            factory,
            spec,
            delivery.body,
            delivery.message_id,
            consumer=service_name,
            dispatcher=self.dispatch,
        )
        return str(settle(delivery, work, factory))

    namespace = {
        "name": service_name,
        "db": Database(),
        "dispatch": StepDispatch(),
        "registration": FunctionRegistration(spec),
        "handle": step_consumer(spec.name)(handle),
        "__doc__": f"Runs the step function {spec.name!r}.",
        "__module__": spec.func.__module__,
    }
    return type(f"{_camel(spec.name)}Service", (), namespace)


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
