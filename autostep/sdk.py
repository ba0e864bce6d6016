"""The user-facing function API: ``@function`` over a typed Python function.

::

    class FiboIn(BaseModel):
        n: int

    class FiboOut(BaseModel):
        value: int

    @function(name="fibo", retries=3, backoff=1.0, timeout=10)
    def fibo(inp: FiboIn) -> FiboOut:
        ...

A function may take a second parameter, a :class:`StepContext`, whose
``session`` is the SQLAlchemy session of the step's own transaction: rows the
function writes there commit together with the step's result and the messages
that start the next steps, or not at all. Raise :class:`RetryableError` or
:class:`PermanentError` to steer retries; any other exception is retried
like a :class:`RetryableError` until ``retries`` are spent.

Decorated functions land in :data:`REGISTRY`; ``functions`` serves a module's
functions as nameko services.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from autostep.exceptions import ConflictError, InvalidInput, PermanentError
from autostep.validation import check_payload

__all__ = ["REGISTRY", "FunctionSpec", "RetryPolicy", "StepContext", "function"]

F = TypeVar("F", bound=Callable[..., Any])

#: Upper bound of an exponential backoff, seconds.
MAX_BACKOFF = 300.0


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failing step is tried again."""

    retries: int = 3
    backoff: float = 1.0
    timeout: float | None = None

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (exponential, capped)."""
        return float(min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF))

    def override(self, overrides: dict[str, Any]) -> RetryPolicy:
        """This policy with a step's non-null settings on top."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return RetryPolicy(**{**self.__dict__, **given})


@dataclass
class StepContext:
    """What a running step knows about itself, and its transaction."""

    job_id: uuid.UUID
    process_id: uuid.UUID
    step: str
    attempt: int
    session: Session
    #: Values the engine passes through (the message id, the trigger).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FunctionSpec:
    """A registered step function and how to call it."""

    name: str
    func: Callable[..., Any]
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    policy: RetryPolicy
    takes_context: bool

    def call(self, data: dict[str, Any], context: StepContext) -> dict[str, Any]:
        """Validate ``data``, run the function, and return its output as JSON data.

        Invalid input, invalid output and an output larger than
        ``max_payload_bytes`` as JSON fail the step for good.
        """
        try:
            inp = self.input_model.model_validate(data)
        except ValidationError as exc:
            raise PermanentError(f"input of {self.name!r} is invalid: {exc}") from exc
        result = self.func(inp, context) if self.takes_context else self.func(inp)
        if isinstance(result, self.output_model):
            output = result
        else:
            try:
                output = self.output_model.model_validate(result)
            except ValidationError as exc:
                raise PermanentError(f"output of {self.name!r} is invalid: {exc}") from exc
        data = output.model_dump(mode="json")
        try:
            check_payload(data, field=f"output of {self.name!r}")
        except InvalidInput as exc:
            raise PermanentError(str(exc)) from None
        return data


#: Every function decorated in this process, by name.
REGISTRY: dict[str, FunctionSpec] = {}


def function(
    name: str | None = None,
    *,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float | None = None,
) -> Callable[[F], F]:
    """Register a typed function as a workflow step function.

    ``retries`` is how many times a failed attempt is tried again, ``backoff``
    the first delay in seconds (doubling each time, capped at five minutes),
    ``timeout`` the seconds one attempt may take. A workflow's step may
    override all three.
    """

    def register(func: F) -> F:
        spec = _spec_for(func, name or func.__name__, RetryPolicy(retries, backoff, timeout))
        existing = REGISTRY.get(spec.name)
        if existing is not None and existing.func.__qualname__ != func.__qualname__:
            raise ConflictError(f"function {spec.name!r} is registered twice")
        REGISTRY[spec.name] = spec
        return func

    return register


def _spec_for(func: Callable[..., Any], name: str, policy: RetryPolicy) -> FunctionSpec:
    hints = get_type_hints(func)
    params = list(inspect.signature(func).parameters)
    if not params or len(params) > 2:
        raise TypeError(f"{name}: a step function takes (input) or (input, context)")
    input_model = hints.get(params[0])
    output_model = hints.get("return")
    for what, model in (("input", input_model), ("return", output_model)):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{name}: the {what} annotation must be a pydantic model")
    assert input_model is not None and output_model is not None
    return FunctionSpec(name, func, input_model, output_model, policy, len(params) == 2)
