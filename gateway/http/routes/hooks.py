"""``POST /hooks/{trigger_id}``: a webhook trigger's URL; a call starts a run.

The token comes in the ``X-Autostep-Token`` header (an API key in the
OpenAPI document). The endpoint reads the raw body and hands it, the headers
and the token to :func:`autostep.webhooks.receive`, which checks the token
before it looks at the body: 401 for a missing or wrong token and for an
unknown trigger alike (a 404 would tell a caller without the token which
ids exist), 409 for a disabled trigger, 413 for a body over the limit, 415
for a body that is not JSON by its content type, 400 for one that does not
parse, 422 for one that is not an object. It answers 202 with the job's id
and where to follow it; an ``Idempotency-Key`` sent again answers 200 with
the job it started.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Request, Response, Security, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session, sessionmaker

from autostep import webhooks
from autostep.db import unit_of_work
from autostep.gateway.http.deps import Database, IdempotencyKey
from autostep.gateway.http.problems import problem_responses
from autostep.gateway.http.schemas import HookAccepted

__all__ = ["router"]

router = APIRouter(tags=["webhooks"])

_token = APIKeyHeader(
    name=webhooks.TOKEN_HEADER,
    scheme_name="WebhookToken",
    description="The webhook trigger's token, shown when it was created or rotated.",
    auto_error=False,
)

_BODY = {
    "required": False,
    "description": "Any JSON object: the run's input, or the `body` its input template reads. "
    "No body is `{}`.",
    "content": {"application/json": {"schema": {"type": "object"}}},
}


@router.post(
    "/hooks/{trigger_id}",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"description": "Started before with this Idempotency-Key", "model": HookAccepted},
        **problem_responses(400, 401, 409, 413, 415, 422),
    },
    openapi_extra={"requestBody": _BODY},
)
async def call_webhook(
    trigger_id: uuid.UUID,
    request: Request,
    response: Response,
    db: Database,
    token: Annotated[str | None, Security(_token)] = None,
    idempotency_key: IdempotencyKey = None,
) -> HookAccepted:
    """Start a run of the webhook trigger's workflow with the JSON body.

    Answers once the run is stored; follow it at ``status_url``.
    """
    raw_body = await request.body()
    job_id, replayed = await run_in_threadpool(
        _receive, db, trigger_id, token, raw_body, request.headers.items(), idempotency_key
    )
    if replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    return HookAccepted(job_id=job_id, status_url=f"/jobs/{job_id}")


def _receive(
    db: sessionmaker[Session],
    trigger_id: uuid.UUID,
    token: str | None,
    raw_body: bytes,
    headers: Iterable[tuple[str, str]],
    idempotency_key: str | None,
) -> tuple[uuid.UUID, bool]:
    with unit_of_work(db) as session:
        started = webhooks.receive(
            session, trigger_id, token, raw_body, headers, idempotency_key=idempotency_key
        )
        return started.job.id, started.replayed
