"""Drafts: the definition a form edits piece by piece, then publishes as a version.

Each workflow has one draft (:class:`~autostep.models.WorkflowDraft`), made
from its newest version the first time it is read. Every write names the
revision it expects (the draft's ETag) and locks the draft's row; when
another write changed it since, :class:`PreconditionFailed` and nothing is
written. While edited, a draft is checked piece by piece (names, types, a
step's name unique): it may point at a step not added yet. The whole graph
and every expression are checked only by :func:`publish`, through
:func:`autostep.catalog.publish_version`, whose errors name the field
(``steps[1].next[0].to``). Publishing stores the next immutable version and
leaves the draft equal to it.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from autostep import catalog
from autostep.definitions import StepDefinition, TransitionDefinition, WorkflowDefinition
from autostep.exceptions import (
    ConflictError,
    DefinitionError,
    InvalidInput,
    NotFoundError,
    PreconditionFailed,
)
from autostep.models import WorkflowDraft, WorkflowVersion
from autostep.validation import check_payload, invalid_input

__all__ = [
    "DraftDefinition",
    "add_step",
    "add_transition",
    "change_step",
    "change_transition",
    "delete_step",
    "delete_transition",
    "get_draft",
    "move_step",
    "publish",
    "replace_draft",
]


class DraftDefinition(WorkflowDefinition):
    """A definition as edited: well-formed pieces, but the graph may be incomplete or empty."""

    steps: list[StepDefinition] = Field(default_factory=list)


def get_draft(session: Session, workflow_id: uuid.UUID | str) -> WorkflowDraft:
    """The workflow's draft; a workflow without one gets it from its newest version."""
    workflow = catalog.find_workflow(session, workflow_id)
    draft = session.get(WorkflowDraft, workflow.id)
    if draft is not None:
        return draft
    newest = catalog.latest_version(session, workflow.id)
    session.execute(
        insert(WorkflowDraft)
        .values(workflow_id=workflow.id, definition=newest.definition, revision=1)
        .on_conflict_do_nothing(index_elements=["workflow_id"])
    )
    found = session.get(WorkflowDraft, workflow.id, populate_existing=True)
    assert found is not None  # inserted now, or by another transaction a moment ago
    return found


def replace_draft(
    session: Session, workflow_id: uuid.UUID | str, definition: dict[str, Any], expected: int
) -> WorkflowDraft:
    """Replace the whole draft; its ``name`` must be the workflow's."""
    parsed = _well_formed(definition)
    draft = _locked(session, workflow_id, expected)
    if parsed["name"] != draft.definition["name"]:
        raise InvalidInput(f"is {parsed['name']!r}, not the name of the workflow", field="name")
    return _save(session, draft, parsed)


def add_step(
    session: Session, workflow_id: uuid.UUID | str, step: dict[str, Any], expected: int
) -> WorkflowDraft:
    """Append ``step`` to the draft; :class:`ConflictError` if its name is taken."""
    added = _step(step)
    draft = _locked(session, workflow_id, expected)
    steps = _steps(draft)
    if any(existing["name"] == added["name"] for existing in steps):
        raise ConflictError(f"the draft has a step {added['name']!r} already")
    return _save(session, draft, {**draft.definition, "steps": [*steps, added]})


def change_step(
    session: Session,
    workflow_id: uuid.UUID | str,
    name: str,
    step: dict[str, Any],
    expected: int,
) -> WorkflowDraft:
    """Replace step ``name`` in its place (it may be renamed to a name not taken)."""
    changed = _step(step)
    draft = _locked(session, workflow_id, expected)
    steps = _steps(draft)
    index = _index_of(steps, name)
    if changed["name"] != name and any(s["name"] == changed["name"] for s in steps):
        raise ConflictError(f"the draft has a step {changed['name']!r} already")
    steps[index] = changed
    return _save(session, draft, {**draft.definition, "steps": steps})


def delete_step(
    session: Session, workflow_id: uuid.UUID | str, name: str, expected: int
) -> WorkflowDraft:
    """Remove step ``name`` (transitions to it stay until publish names them)."""
    draft = _locked(session, workflow_id, expected)
    steps = _steps(draft)
    del steps[_index_of(steps, name)]
    return _save(session, draft, {**draft.definition, "steps": steps})


def move_step(
    session: Session, workflow_id: uuid.UUID | str, name: str, position: int, expected: int
) -> WorkflowDraft:
    """Move step ``name`` to ``position`` (0 is first: the start step unless ``start`` is set)."""
    draft = _locked(session, workflow_id, expected)
    steps = _steps(draft)
    if not 0 <= position < len(steps):
        raise InvalidInput(
            f"must be between 0 and {len(steps) - 1}, the draft has {len(steps)} step(s)",
            field="position",
        )
    moved = steps.pop(_index_of(steps, name))
    steps.insert(position, moved)
    return _save(session, draft, {**draft.definition, "steps": steps})


def add_transition(
    session: Session,
    workflow_id: uuid.UUID | str,
    name: str,
    transition: dict[str, Any],
    expected: int,
) -> WorkflowDraft:
    """Append ``transition`` to step ``name``'s, tried after the ones it has."""
    added = _transition(transition)
    draft = _locked(session, workflow_id, expected)
    steps = _steps(draft)
    step = steps[_index_of(steps, name)]
    step["next"] = [*step.get("next", []), added]
    return _save(session, draft, {**draft.definition, "steps": steps})


def change_transition(
    session: Session,
    workflow_id: uuid.UUID | str,
    name: str,
    index: int,
    transition: dict[str, Any],
    expected: int,
) -> WorkflowDraft:
    """Replace transition ``index`` of step ``name``."""
    changed = _transition(transition)
    draft = _locked(session, workflow_id, expected)
    steps = _steps(draft)
    step = steps[_index_of(steps, name)]
    transitions = list(step.get("next", []))
    transitions[_transition_index(transitions, name, index)] = changed
    step["next"] = transitions
    return _save(session, draft, {**draft.definition, "steps": steps})


def delete_transition(
    session: Session, workflow_id: uuid.UUID | str, name: str, index: int, expected: int
) -> WorkflowDraft:
    """Remove transition ``index`` of step ``name``; the ones after it move up."""
    draft = _locked(session, workflow_id, expected)
    steps = _steps(draft)
    step = steps[_index_of(steps, name)]
    transitions = list(step.get("next", []))
    del transitions[_transition_index(transitions, name, index)]
    step["next"] = transitions
    return _save(session, draft, {**draft.definition, "steps": steps})


def publish(
    session: Session, workflow_id: uuid.UUID | str, expected: int
) -> tuple[WorkflowVersion, WorkflowDraft]:
    """Validate the whole draft and store it as the workflow's next version.

    Raises what :func:`autostep.catalog.publish_version` raises
    (:class:`DefinitionError` naming the field); nothing is stored then.
    The draft stays, now equal to the version, with a new revision.
    """
    draft = _locked(session, workflow_id, expected)
    version = catalog.publish_version(session, draft.workflow_id, draft.definition)
    return version, _save(session, draft, version.definition)


def _locked(session: Session, workflow_id: uuid.UUID | str, expected: int) -> WorkflowDraft:
    """The draft, its row locked, if at revision ``expected``; else :class:`PreconditionFailed`."""
    draft = get_draft(session, workflow_id)
    locked = session.scalar(
        select(WorkflowDraft)
        .where(WorkflowDraft.workflow_id == draft.workflow_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert locked is not None  # drafts are deleted only with their workflow, which is locked out
    if locked.revision != expected:
        raise PreconditionFailed(
            f"the draft is at revision {locked.revision}, not {expected}: "
            "someone changed it since you read it; read it again",
            current=locked.revision,
        )
    return locked


def _save(session: Session, draft: WorkflowDraft, definition: dict[str, Any]) -> WorkflowDraft:
    check_payload(definition, field="definition")
    draft.definition = definition
    draft.revision += 1
    draft.updated_at = session.scalar(select(func.now()))  # type: ignore[assignment]
    session.flush()
    return draft


def _well_formed(definition: dict[str, Any]) -> dict[str, Any]:
    check_payload(definition, field="definition")
    return _parsed(DraftDefinition, definition, "definition")


def _step(step: dict[str, Any]) -> dict[str, Any]:
    return _parsed(StepDefinition, step, "step")


def _transition(transition: dict[str, Any]) -> dict[str, Any]:
    return _parsed(TransitionDefinition, transition, "transition")


def _parsed(model: type[BaseModel], data: dict[str, Any], whole: str) -> dict[str, Any]:
    """``data`` checked against ``model``, as stored; :class:`DefinitionError` naming the field."""
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc, kind=DefinitionError, whole=whole) from None
    return parsed.model_dump(mode="json", exclude_none=True)


def _steps(draft: WorkflowDraft) -> list[dict[str, Any]]:
    """A copy of the draft's steps, safe to change."""
    return [{**step, "next": list(step.get("next", []))} for step in draft.definition["steps"]]


def _index_of(steps: list[dict[str, Any]], name: str) -> int:
    for index, step in enumerate(steps):
        if step["name"] == name:
            return index
    raise NotFoundError(f"the draft has no step {name!r}")


def _transition_index(transitions: list[dict[str, Any]], name: str, index: int) -> int:
    if not 0 <= index < len(transitions):
        raise NotFoundError(f"step {name!r} of the draft has no transition {index}")
    return index
