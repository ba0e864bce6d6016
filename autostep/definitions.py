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
every CEL expression, checks that it reads only the variables that exist
where it is used, refuses steps that would hand over to each other forever,
and raises :class:`DefinitionError` naming the field (``steps[1].next[0].when``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autostep.conditions import (
    CONDITION_VARIABLES,
    FAN_OUT_VARIABLES,
    FOR_EACH_VARIABLES,
    INPUT_VARIABLES,
    check_variables,
)
from autostep.exceptions import DefinitionError
from autostep.validation import Description, Name, invalid_input

__all__ = [
    "DEFAULT_MAX_STEPS",
    "StepDefinition",
    "TransitionDefinition",
    "WorkflowDefinition",
    "parse_definition",
]

#: Steps a job may enter unless its workflow sets ``max_steps``.
DEFAULT_MAX_STEPS = 10_000


class TransitionDefinition(BaseModel):
    """An edge to ``to``, taken when ``when`` (CEL over output and input) holds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: str
    when: str | None = None


class StepDefinition(BaseModel):
    """One step: a function, its static config and how its input is built."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    function: Name
    config: dict[str, Any] = Field(default_factory=dict)
    #: Field -> CEL over ``input``, ``prev`` (and ``item``, ``index`` in a fan-out).
    input: dict[str, str] | None = None
    #: CEL over ``input`` and ``prev`` giving the list to fan out over.
    for_each: str | None = None
    retries: int | None = Field(default=None, ge=0, le=100)
    backoff: float | None = Field(default=None, ge=0, le=86400)
    timeout: float | None = Field(default=None, gt=0, le=86400)
    next: list[TransitionDefinition] = Field(default_factory=list)

    def policy(self) -> dict[str, Any]:
        """The retry settings this step sets over its function's defaults."""
        return {"retries": self.retries, "backoff": self.backoff, "timeout": self.timeout}


class WorkflowDefinition(BaseModel):
    """A whole workflow: its steps and where it starts."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    description: Description = ""
    start: str | None = None
    #: Steps a job may enter (fan-out children and retries not counted) before it fails.
    max_steps: int = Field(default=DEFAULT_MAX_STEPS, ge=1, le=1_000_000)
    steps: list[StepDefinition] = Field(min_length=1)

    @property
    def start_step(self) -> str:
        return self.start or self.steps[0].name

    def step(self, name: str) -> StepDefinition:
        return next(step for step in self.steps if step.name == name)


def parse_definition(data: dict[str, Any]) -> WorkflowDefinition:
    """Validate ``data`` completely, compiling every expression.

    Raises :class:`DefinitionError` whose ``field`` is a path such as
    ``steps[1].next[0].when``.
    """
    try:
        definition = WorkflowDefinition.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc, kind=DefinitionError, whole="definition") from None
    _check_graph(definition)
    _check_expressions(definition)
    _check_endless_loops(definition)
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
        for j, transition in enumerate(step.next):
            if transition.to not in names:
                raise DefinitionError(
                    f"no step named {transition.to!r}", field=f"steps[{i}].next[{j}].to"
                )


def _check_expressions(definition: WorkflowDefinition) -> None:
    """Compile every expression, over the variables that exist where it is used."""
    for i, step in enumerate(definition.steps):
        where = f"steps[{i}]"
        if step.for_each is not None:
            check_variables(step.for_each, FOR_EACH_VARIABLES, field=f"{where}.for_each")
        mapping_sees = INPUT_VARIABLES + (FAN_OUT_VARIABLES if step.for_each is not None else ())
        for key, source in (step.input or {}).items():
            check_variables(source, mapping_sees, field=f"{where}.input.{key}")
        for j, transition in enumerate(step.next):
            if transition.when is not None:
                check_variables(
                    transition.when, CONDITION_VARIABLES, field=f"{where}.next[{j}].when"
                )


def _check_endless_loops(definition: WorkflowDefinition) -> None:
    """Refuse steps that hand over to each other forever.

    A step whose first transition has no ``when`` always takes it (the
    transitions after it are never tried). Following those certain edges
    from a step either stops or comes back around; a cycle made only of
    them can never end. A loop with a condition anywhere on it (on the edge
    that loops, or on an earlier transition that leaves) may end and is
    allowed.
    """
    position = {step.name: i for i, step in enumerate(definition.steps)}
    certain = {
        step.name: step.next[0].to
        for step in definition.steps
        if step.next and step.next[0].when is None
    }
    seen: set[str] = set()
    for step in definition.steps:
        path: list[str] = []
        current: str | None = step.name
        while current is not None and current not in seen:
            seen.add(current)
            path.append(current)
            current = certain.get(current)
        if current is None or current not in path:
            continue
        cycle = path[path.index(current) :]
        first = min(cycle, key=position.__getitem__)
        turn = cycle.index(first)
        ordered = cycle[turn:] + cycle[:turn] + [first]
        raise DefinitionError(
            "these steps hand over to each other without a condition and never end: "
            + " → ".join(ordered)
            + "; put a `when` on one of these transitions, or a conditional one before it",
            field=f"steps[{position[first]}].next[0].to",
        )
