"""The workflow definition a user submits, validated before anything is stored.

A definition is plain data (JSON or YAML)::

    name: orders
    steps:
      - name: fetch
        function: http_request
        config: {url: "https://example.com/orders"}
        next:
          - to: big
            when: "output.status == 200 && size(output.json.items) > 10"
          - to: small            # no `when`: the otherwise branch
      - name: big
        function: transform
        for_each: "prev.json.items"  # fan out: one process per item, then join
        input: {value: "item.price"}
      - name: small
        function: log

Transitions are tried in order and the first that holds is taken; a step with
no transition taken ends the job with that step's output. Validation compiles
every CEL expression and raises :class:`DefinitionError` naming the field.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autostep.conditions import compile_expression
from autostep.exceptions import DefinitionError

__all__ = [
    "DEFAULT_MAX_STEPS",
    "StepDefinition",
    "TransitionDefinition",
    "WorkflowDefinition",
    "parse_definition",
]

#: Steps a job may enter unless its workflow sets ``max_steps``.
DEFAULT_MAX_STEPS = 10_000

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,99}$")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("must start with a letter or _ and use only letters, digits, _ and -")
    return value


class TransitionDefinition(BaseModel):
    """An edge to ``to``, taken when ``when`` (CEL over output and input) holds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: str
    when: str | None = None


class StepDefinition(BaseModel):
    """One step: a function, its static config and how its input is built."""

    model_config = ConfigDict(extra="forbid")

    name: str
    function: str
    config: dict[str, Any] = Field(default_factory=dict)
    #: Field -> CEL over ``input``, ``prev`` (and ``item``, ``index`` in a fan-out).
    input: dict[str, str] | None = None
    #: CEL over ``input`` and ``prev`` giving the list to fan out over.
    for_each: str | None = None
    retries: int | None = Field(default=None, ge=0, le=100)
    backoff: float | None = Field(default=None, ge=0, le=86400)
    timeout: float | None = Field(default=None, gt=0, le=86400)
    next: list[TransitionDefinition] = Field(default_factory=list)

    _name = field_validator("name", "function")(_check_name)

    def policy(self) -> dict[str, Any]:
        """The retry settings this step sets over its function's defaults."""
        return {"retries": self.retries, "backoff": self.backoff, "timeout": self.timeout}


class WorkflowDefinition(BaseModel):
    """A whole workflow: its steps and where it starts."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    start: str | None = None
    #: Steps a job may enter (fan-out children and retries not counted) before it fails.
    max_steps: int = Field(default=DEFAULT_MAX_STEPS, ge=1, le=1_000_000)
    steps: list[StepDefinition] = Field(min_length=1)

    _name = field_validator("name")(_check_name)

    @property
    def start_step(self) -> str:
        return self.start or self.steps[0].name

    def step(self, name: str) -> StepDefinition:
        return next(step for step in self.steps if step.name == name)


def parse_definition(data: dict[str, Any]) -> WorkflowDefinition:
    """Validate ``data`` completely, compiling every expression.

    Raises :class:`DefinitionError` whose ``field`` is a dotted path such as
    ``steps[1].next[0].when``.
    """
    try:
        definition = WorkflowDefinition.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "definition"
        raise DefinitionError(error["msg"], field=field) from exc
    _check_graph(definition)
    return definition


def _check_graph(definition: WorkflowDefinition) -> None:
    names: set[str] = set()
    for i, step in enumerate(definition.steps):
        if step.name in names:
            raise DefinitionError(f"duplicate step name {step.name!r}", field=f"steps[{i}].name")
        names.add(step.name)
    if definition.start_step not in names:
        raise DefinitionError(f"no step named {definition.start_step!r}", field="start")
    for i, step in enumerate(definition.steps):
        where = f"steps[{i}]"
        if step.for_each is not None:
            compile_expression(step.for_each, field=f"{where}.for_each")
        for key, source in (step.input or {}).items():
            compile_expression(source, field=f"{where}.input.{key}")
        for j, transition in enumerate(step.next):
            if transition.to not in names:
                raise DefinitionError(
                    f"no step named {transition.to!r}", field=f"{where}.next[{j}].to"
                )
            if transition.when is not None:
                compile_expression(transition.when, field=f"{where}.next[{j}].when")
