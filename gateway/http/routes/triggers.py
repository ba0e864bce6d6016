"""``/triggers``: create, list, read, change and delete triggers; rotate a token; fire by hand.

The core does the work (:mod:`autostep.triggers`, :mod:`autostep.firing`),
as for the CLI and the ``triggers`` RPC service: every write is checked
whole before anything is stored (a bad field answers 422 naming it, e.g.
``config.schedule``) and announces ``trigger.changed`` in the same
transaction. A webhook trigger's token is in the answer of its creation and
of ``POST /triggers/{id}/token`` only, with a ready ``curl`` command. A
manual trigger starts a run with ``POST /triggers/{id}/fire``, which honours
an ``Idempotency-Key`` as ``POST /workflows/{id}/jobs`` does.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response, status
from sqlalchemy.orm import Session

from autostep import catalog, firing, queries, triggers
from autostep.db import unit_of_work
from autostep.exceptions import InvalidInput, NotFoundError
from autostep.gateway.http.deps import Database, IdempotencyKey
from autostep.gateway.http.problems import problem_responses
from autostep.gateway.http.schemas import (
    JobDetail,
    ManualFire,
    TokenOut,
    TriggerCreated,
    TriggerDetail,
    TriggerIn,
    TriggerOut,
    TriggerPage,
    TriggerPatch,
)
from autostep.models import Trigger, Workflow
from autostep.webhooks import TOKEN_HEADER

__all__ = ["curl_example", "router"]

router = APIRouter(prefix="/triggers", tags=["triggers"])

#: Statuses of every write besides those of its body.
_WRITE_PROBLEMS = (400, 404, 409, 413, 415, 422)


def curl_example(request: Request, trigger_id: uuid.UUID, token: str) -> str:
    """A command that calls the webhook ``trigger_id`` on this gateway with ``token``."""
    url = str(request.base_url).rstrip("/") + triggers.hook_path(trigger_id)
    return (
        f"curl -X POST {url} -H '{TOKEN_HEADER}: {token}' "
        "-H 'Content-Type: application/json' -d '{}'"
    )


@router.get("", responses=problem_responses(404, 422))
def list_triggers(
    db: Database,
    project: Annotated[uuid.UUID | None, Query(description="A project's id.")] = None,
    workflow: Annotated[uuid.UUID | None, Query(description="A workflow's id.")] = None,
    kind: Annotated[str | None, Query(max_length=50, description="e.g. cron")] = None,
    cursor: Annotated[
        str | None, Query(max_length=500, description="`next` of the page before.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> TriggerPage:
    """Triggers by project, workflow and name, one page at a time (follow ``next``)."""
    after = _decode(cursor) if cursor is not None else None
    with unit_of_work(db) as session:
        found = triggers.list_triggers(
            session,
            project=project,
            workflow=str(workflow) if workflow is not None else None,
            kind=kind,
        )
        listed = sorted(((_key(t), triggers.trigger_dict(t)) for t in found), key=_first)
    page = [(key, shown) for key, shown in listed if after is None or key > after][: limit + 1]
    more = len(page) > limit
    return TriggerPage(
        items=[TriggerOut.model_validate(shown) for _, shown in page[:limit]],
        next=_encode(page[limit - 1][0]) if more else None,
    )


@router.post("", status_code=status.HTTP_201_CREATED, responses=problem_responses(*_WRITE_PROBLEMS))
def create_trigger(
    body: Annotated[TriggerIn, Body()], db: Database, request: Request
) -> TriggerCreated:
    """A new trigger of a workflow; 409 if the workflow has one of that name, or is archived.

    A webhook's ``token`` is in this answer only, with a ready ``curl`` command.
    """
    with unit_of_work(db) as session:
        workflow = _workflow(session, body.workflow_id)
        created = triggers.create_trigger(
            session,
            workflow.project_id,
            str(workflow.id),
            body.name,
            body.kind,
            body.config.model_dump(mode="json"),
            input_template=body.input_template,
            enabled=body.enabled,
        )
        view = _view(session, created.trigger.id)
    token = created.token
    curl = curl_example(request, view.id, token) if token is not None else None
    return TriggerCreated(**view.model_dump(), token=token, curl=curl)


@router.get("/{trigger_id}", responses=problem_responses(404, 422))
def get_trigger(trigger_id: uuid.UUID, db: Database) -> TriggerDetail:
    """The trigger, its next five fire times (an enabled cron trigger) and its last ten ticks."""
    with unit_of_work(db) as session:
        return _view(session, trigger_id)


@router.patch("/{trigger_id}", responses=problem_responses(*_WRITE_PROBLEMS))
def update_trigger(trigger_id: uuid.UUID, body: TriggerPatch, db: Database) -> TriggerDetail:
    """Change what is given: ``config`` replaces the whole config; ``input_template: null``
    clears the template.

    Enabling a trigger again, or changing its schedule or zone, starts its
    ticks afresh: ticks missed before are not caught up.
    """
    sent = body.model_fields_set
    template = body.input_template if "input_template" in sent else triggers.UNCHANGED
    with unit_of_work(db) as session:
        triggers.update_trigger(
            session,
            trigger_id,
            name=body.name,
            config=body.config,
            input_template=template,
            enabled=body.enabled,
        )
        return _view(session, trigger_id)


@router.delete(
    "/{trigger_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404, 422),
)
def delete_trigger(trigger_id: uuid.UUID, db: Database) -> None:
    """Delete the trigger and its ticks; the jobs it started stay."""
    with unit_of_work(db) as session:
        triggers.delete_trigger(session, trigger_id)


@router.post("/{trigger_id}/token", responses=problem_responses(404, 409, 422))
def rotate_token(trigger_id: uuid.UUID, db: Database, request: Request) -> TokenOut:
    """A new token for a webhook trigger, shown only now; the old one stops working at once.

    409 for a trigger of another kind.
    """
    with unit_of_work(db) as session:
        token = triggers.rotate_token(session, trigger_id)
    return TokenOut(token=token, curl=curl_example(request, trigger_id, token))


@router.post(
    "/{trigger_id}/fire",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "Started before with this Idempotency-Key", "model": JobDetail},
        **problem_responses(*_WRITE_PROBLEMS),
    },
)
def fire_trigger(
    trigger_id: uuid.UUID,
    db: Database,
    response: Response,
    body: ManualFire | None = None,
    idempotency_key: IdempotencyKey = None,
) -> JobDetail:
    """Start a run from a manual trigger: its preset input, updated with ``input``.

    409 for a trigger of another kind (they start on their own) or a disabled one.
    """
    sent = body.input if body is not None else {}
    with unit_of_work(db) as session:
        started = firing.start_manual(session, trigger_id, sent, idempotency_key=idempotency_key)
        if started.replayed:
            response.status_code = status.HTTP_200_OK
            response.headers["Idempotent-Replayed"] = "true"
        session.flush()
        return JobDetail.model_validate(queries.job_tree(session, started.job.id))


def _workflow(session: Session, workflow_id: uuid.UUID) -> Workflow:
    """The workflow a body names; a missing one is a bad ``workflow_id``, not a missing page."""
    try:
        return catalog.find_workflow(session, workflow_id)
    except NotFoundError:
        raise InvalidInput(f"no workflow {workflow_id}", field="workflow_id") from None


def _view(session: Session, trigger_id: uuid.UUID) -> TriggerDetail:
    session.flush()
    return TriggerDetail.model_validate(triggers.trigger_view(session, trigger_id))


def _key(trigger: Trigger) -> tuple[str, str, str]:
    return (str(trigger.project_id), str(trigger.workflow_id), trigger.name)


def _first(pair: tuple[tuple[str, str, str], Any]) -> tuple[str, str, str]:
    return pair[0]


def _encode(key: tuple[str, str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def _decode(cursor: str) -> tuple[str, str, str]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, binascii.Error):
        key = None
    if not (isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key)):
        raise InvalidInput("is not a cursor this list gave", field="cursor")
    return (key[0], key[1], key[2])
