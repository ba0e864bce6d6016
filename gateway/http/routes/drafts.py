"""``/workflows/{id}/draft``: the definition a form edits piece by piece, then publishes.

Every answer carries the draft's ``ETag`` (its revision, quoted). Every
write needs ``If-Match`` with that ETag: 428 without it, 412 when another
write changed the draft since (nothing is written then), so two editors
never overwrite each other silently. Steps and transitions are checked one
by one as they are written; the whole definition only at ``publish``, which
answers 422 naming the field (``steps[1].next[0].to``) and stores nothing.
The core does the work (:mod:`autostep.drafts`).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Response, status

from autostep import drafts
from autostep.db import unit_of_work
from autostep.definitions import StepDefinition, TransitionDefinition, WorkflowDefinition
from autostep.exceptions import PreconditionFailed
from autostep.gateway.http.deps import Database
from autostep.gateway.http.problems import problem_responses
from autostep.gateway.http.routes.workflows import published
from autostep.gateway.http.schemas import DraftOut, DraftPublished, StepPosition
from autostep.models import WorkflowDraft

__all__ = ["router"]

router = APIRouter(prefix="/workflows", tags=["drafts"])

#: Statuses of every write besides those of its body: no If-Match, a stale one.
_WRITE_PROBLEMS = (400, 404, 409, 412, 413, 415, 422, 428)


def expected_revision(
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            description="The draft's ETag as last read; required on every write.",
        ),
    ] = None,
) -> int:
    """The revision ``If-Match`` names; 428 without it, 412 when it names none."""
    if if_match is None:
        raise HTTPException(
            status.HTTP_428_PRECONDITION_REQUIRED,
            "send If-Match with the draft's ETag (GET the draft to read it)",
        )
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isascii() or not tag.isdigit():
        raise PreconditionFailed(f"If-Match {if_match!r} is not an ETag of this draft")
    return int(tag)


#: An endpoint parameter: the revision the write expects.
Expected = Annotated[int, Depends(expected_revision)]
StepName = Annotated[str, Path(max_length=200, description="The step's name.")]
TransitionIndex = Annotated[int, Path(ge=0, le=10_000, description="0 is the first tried.")]


def _answer(draft: WorkflowDraft, response: Response) -> DraftOut:
    response.headers["ETag"] = f'"{draft.revision}"'
    return DraftOut.model_validate(draft, from_attributes=True)


@router.get("/{workflow_id}/draft", responses=problem_responses(404, 422))
def get_draft(workflow_id: uuid.UUID, db: Database, response: Response) -> DraftOut:
    """The draft; a workflow never edited gets one equal to its newest version."""
    with unit_of_work(db) as session:
        return _answer(drafts.get_draft(session, workflow_id), response)


@router.put("/{workflow_id}/draft", responses=problem_responses(*_WRITE_PROBLEMS))
def replace_draft(
    workflow_id: uuid.UUID,
    definition: WorkflowDefinition,
    expected: Expected,
    db: Database,
    response: Response,
) -> DraftOut:
    """Replace the whole draft; its ``name`` must be the workflow's."""
    body = definition.model_dump(mode="json", exclude_unset=True)
    with unit_of_work(db) as session:
        return _answer(drafts.replace_draft(session, workflow_id, body, expected), response)


@router.post(
    "/{workflow_id}/draft/steps",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(*_WRITE_PROBLEMS),
)
def add_step(
    workflow_id: uuid.UUID,
    step: StepDefinition,
    expected: Expected,
    db: Database,
    response: Response,
) -> DraftOut:
    """Add a step after the others; 409 if the draft has a step of that name."""
    body = step.model_dump(mode="json", exclude_unset=True)
    with unit_of_work(db) as session:
        return _answer(drafts.add_step(session, workflow_id, body, expected), response)


@router.put("/{workflow_id}/draft/steps/{name}", responses=problem_responses(*_WRITE_PROBLEMS))
def change_step(
    workflow_id: uuid.UUID,
    name: StepName,
    step: StepDefinition,
    expected: Expected,
    db: Database,
    response: Response,
) -> DraftOut:
    """Replace the step ``name`` in its place; it may take a new name that is free."""
    body = step.model_dump(mode="json", exclude_unset=True)
    with unit_of_work(db) as session:
        return _answer(drafts.change_step(session, workflow_id, name, body, expected), response)


@router.delete("/{workflow_id}/draft/steps/{name}", responses=problem_responses(*_WRITE_PROBLEMS))
def delete_step(
    workflow_id: uuid.UUID, name: StepName, expected: Expected, db: Database, response: Response
) -> DraftOut:
    """Remove the step ``name``; transitions to it stay until publish names them."""
    with unit_of_work(db) as session:
        return _answer(drafts.delete_step(session, workflow_id, name, expected), response)


@router.post(
    "/{workflow_id}/draft/steps/{name}/move", responses=problem_responses(*_WRITE_PROBLEMS)
)
def move_step(
    workflow_id: uuid.UUID,
    name: StepName,
    to: StepPosition,
    expected: Expected,
    db: Database,
    response: Response,
) -> DraftOut:
    """Move the step ``name`` to ``position`` (0 is first, the start unless ``start`` is set)."""
    with unit_of_work(db) as session:
        draft = drafts.move_step(session, workflow_id, name, to.position, expected)
        return _answer(draft, response)


@router.post(
    "/{workflow_id}/draft/steps/{name}/transitions",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(*_WRITE_PROBLEMS),
)
def add_transition(
    workflow_id: uuid.UUID,
    name: StepName,
    transition: TransitionDefinition,
    expected: Expected,
    db: Database,
    response: Response,
) -> DraftOut:
    """Add a transition to the step ``name``, tried after those it has."""
    body = transition.model_dump(mode="json", exclude_unset=True)
    with unit_of_work(db) as session:
        draft = drafts.add_transition(session, workflow_id, name, body, expected)
        return _answer(draft, response)


@router.put(
    "/{workflow_id}/draft/steps/{name}/transitions/{index}",
    responses=problem_responses(*_WRITE_PROBLEMS),
)
def change_transition(
    workflow_id: uuid.UUID,
    name: StepName,
    index: TransitionIndex,
    transition: TransitionDefinition,
    expected: Expected,
    db: Database,
    response: Response,
) -> DraftOut:
    """Replace the transition at ``index`` of the step ``name``."""
    body = transition.model_dump(mode="json", exclude_unset=True)
    with unit_of_work(db) as session:
        draft = drafts.change_transition(session, workflow_id, name, index, body, expected)
        return _answer(draft, response)


@router.delete(
    "/{workflow_id}/draft/steps/{name}/transitions/{index}",
    responses=problem_responses(*_WRITE_PROBLEMS),
)
def delete_transition(
    workflow_id: uuid.UUID,
    name: StepName,
    index: TransitionIndex,
    expected: Expected,
    db: Database,
    response: Response,
) -> DraftOut:
    """Remove the transition at ``index`` of the step ``name``; those after it move up."""
    with unit_of_work(db) as session:
        draft = drafts.delete_transition(session, workflow_id, name, index, expected)
        return _answer(draft, response)


@router.post(
    "/{workflow_id}/draft/publish",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(*_WRITE_PROBLEMS),
)
def publish_draft(
    workflow_id: uuid.UUID, expected: Expected, db: Database, response: Response
) -> DraftPublished:
    """Check the whole draft and store it as the next version (422 naming the field if not).

    The draft stays, equal to the new version, with a new ETag.
    """
    with unit_of_work(db) as session:
        version, draft = drafts.publish(session, workflow_id, expected)
        out = _answer(draft, response)
        return DraftPublished(**published(session, version).model_dump(), draft=out)
