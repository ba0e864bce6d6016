"""Errors as RFC 9457 problem details, from one table of the core's exceptions.

Every error the HTTP gateway answers is an ``application/problem+json``
body (:class:`Problem`): ``type``, ``title``, ``status``, ``detail``, the
request path as ``instance``, and ``errors`` naming each bad field with where
it was (``path``, ``query``, ``body``). :data:`PROBLEMS` maps the core's
exception tree to HTTP statuses in one place, each with its problem type
``urn:autostep:problem:<kind>`` (``unauthenticated`` is a webhook call
without its trigger's token: 401, the same for a wrong token and an unknown
trigger); FastAPI's validation errors
become 422 (400 for a body that is not JSON); a database that does not
answer (or a connection pool that stays exhausted) becomes 503 with
``Retry-After``; anything unexpected becomes a
500 whose ``reference`` names the one log line that holds its traceback.
Expected errors are logged in one line, without a traceback.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autostep.db import DATABASE_OUTAGES
from autostep.exceptions import (
    AutostepError,
    ConflictError,
    DefinitionError,
    InfrastructureError,
    InvalidInput,
    MalformedBody,
    NotFoundError,
    PayloadTooLarge,
    PreconditionFailed,
    Unauthenticated,
)
from autostep.validation import NAME_PATTERN, NAME_RULE, field_path

__all__ = [
    "PROBLEMS",
    "PROBLEM_MEDIA_TYPE",
    "Problem",
    "ProblemField",
    "UnexpectedErrors",
    "install_problem_handlers",
    "problem_response",
    "problem_responses",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"

#: The core's exceptions as (HTTP status, problem type): the most specific class wins.
PROBLEMS: dict[type[Exception], tuple[int, str]] = {
    Unauthenticated: (401, "unauthenticated"),
    NotFoundError: (404, "not-found"),
    ConflictError: (409, "conflict"),
    PreconditionFailed: (412, "precondition-failed"),
    InvalidInput: (422, "invalid-input"),
    MalformedBody: (400, "malformed-body"),
    PayloadTooLarge: (413, "payload-too-large"),
    DefinitionError: (422, "invalid-definition"),
    InfrastructureError: (503, "unavailable"),
}

_log = logging.getLogger(__name__)


class ProblemField(BaseModel):
    """One field that was refused, and why."""

    field: str = Field(description="Path of the field, e.g. `steps[1].next[0].when`.")
    location: str | None = Field(
        default=None, description="Where it was sent: `path`, `query`, `header` or `body`."
    )
    message: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    type: str = Field(description="A URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[ProblemField] = Field(default_factory=list)
    reference: str | None = Field(
        default=None, description="For a 500: the reference of the server's log line."
    )


def problem_response(
    request_path: str | None,
    status: int,
    kind: str,
    detail: str,
    *,
    errors: list[ProblemField] | None = None,
    reference: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    problem = Problem(
        type=f"urn:autostep:problem:{kind}",
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request_path,
        errors=errors or [],
        reference=reference,
    )
    return JSONResponse(
        problem.model_dump(mode="json", exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting ``statuses`` as problem+json."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
        }
        for status in statuses
    }


def _status_of(exc: Exception) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in PROBLEMS:
            return PROBLEMS[cls]
    return 500, "internal"


async def _autostep_error(request: Request, exc: Exception) -> JSONResponse:
    status, kind = _status_of(exc)
    if status == 500:
        return _unexpected(request, exc)
    errors = None
    detail = str(exc)
    if isinstance(exc, InvalidInput):
        errors = [ProblemField(field=exc.field, message=exc.reason)]
    _log.info("%s %s: %s %s", request.method, request.url.path, status, detail)
    headers = {"Retry-After": "1"} if status == 503 else None
    if isinstance(exc, PreconditionFailed) and exc.current is not None:
        headers = {"ETag": f'"{exc.current}"'}  # the revision to read again
    return problem_response(request.url.path, status, kind, detail, errors=errors, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        location, *path = error["loc"] or ("body",)
        if location == "body":
            path = _without_union_tags(path, exc.body, error)
        if error["type"] == "json_invalid":
            detail = f"the body is not valid JSON: {error.get('ctx', {}).get('error', '')}"
            _log.info("%s %s: 400 %s", request.method, request.url.path, detail)
            return problem_response(request.url.path, 400, "malformed-body", detail.rstrip(": "))
        field = field_path(path) or str(location)
        message = error["msg"]
        if error["type"] == "string_pattern_mismatch" and error["ctx"]["pattern"] == NAME_PATTERN:
            message = NAME_RULE
        errors.append(ProblemField(field=field, location=str(location), message=message))
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    _log.info("%s %s: 422 %s", request.method, request.url.path, detail)
    return problem_response(request.url.path, 422, "invalid-input", detail, errors=errors)


def _without_union_tags(path: list[Any], body: Any, error: Any) -> list[Any]:
    """``path`` without the tags of discriminated unions (``kind``'s value) pydantic puts in.

    ``("cron", "config", "schedule")`` becomes ``("config", "schedule")``; an
    error about the tag itself names the discriminator (``kind``).
    """
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return [*path, error["ctx"]["discriminator"].strip("'")]
    kept: list[Any] = []
    value = body
    tagged = None  # the object whose tag was dropped: one tag per object
    for part in path:
        if isinstance(value, dict) and isinstance(part, str):
            if tagged is not value and part not in value and part in value.values():
                tagged = value
                continue  # the tag pydantic chose the union's member by
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            value = None
        kept.append(part)
    return kept


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    kind = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
    return problem_response(
        request.url.path, exc.status_code, kind, detail, headers=dict(exc.headers or {})
    )


async def _database_outage(request: Request, exc: Exception) -> JSONResponse:
    _log.warning("%s %s: 503 database unavailable: %s", request.method, request.url.path, exc)
    return problem_response(
        request.url.path,
        503,
        "unavailable",
        "the database is unavailable; try again shortly",
        headers={"Retry-After": "1"},
    )


def _unexpected(request: Request, exc: BaseException) -> JSONResponse:
    reference = uuid.uuid4().hex[:12]
    _log.error(
        "%s %s failed unexpectedly [%s]",
        request.method,
        request.url.path,
        reference,
        exc_info=exc,
    )
    return problem_response(
        request.url.path,
        500,
        "internal",
        f"the request failed unexpectedly; the server logged it as [{reference}]",
        reference=reference,
    )


class UnexpectedErrors:
    """ASGI middleware: an exception no handler took becomes a 500 problem, logged once.

    (Starlette's own last-resort handler would log the traceback a second time.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            await _unexpected(Request(scope), exc)(scope, receive, send)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem+json (see the module's docstring)."""
    app.add_exception_handler(AutostepError, _autostep_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    for outage in (*DATABASE_OUTAGES, sa_exc.TimeoutError):
        app.add_exception_handler(outage, _database_outage)
    app.add_middleware(UnexpectedErrors)
