"""A call of a webhook trigger: the token checked, the body turned into a run.

The REST gateway's ``POST /hooks/{trigger_id}`` hands :func:`receive` the
raw body, the headers and the token it found in :data:`TOKEN_HEADER`; the
checks run in this order, each before anything is written:

1. the token (:func:`authenticate`): a missing token, a wrong one, an
   unknown trigger id and a trigger that is not a webhook all raise the same
   :class:`Unauthenticated`, so a caller without the token learns nothing,
   not even whether the id exists;
2. a disabled trigger is a :class:`ConflictError`;
3. the body: at most the trigger's ``config.max_body_bytes``
   (:class:`PayloadTooLarge`), JSON (:class:`MalformedBody`), an object
   (:class:`InvalidInput`); an empty body is ``{}``;
4. the run starts through :func:`autostep.firing.start_run` with the
   variables ``body`` and ``headers`` (lower-case names, the token left out),
   honouring an ``Idempotency-Key``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from autostep import firing, triggers
from autostep.exceptions import (
    ConflictError,
    InvalidInput,
    MalformedBody,
    NotFoundError,
    PayloadTooLarge,
    Unauthenticated,
)
from autostep.models import Trigger

__all__ = ["TOKEN_HEADER", "authenticate", "receive"]

#: The header a webhook call carries its trigger's token in.
TOKEN_HEADER = "X-Autostep-Token"
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}  # fmt: skip
#: What every failed check of the token says.
REFUSED = f"send the webhook's token in the {TOKEN_HEADER} header"


def authenticate(session: Session, trigger_id: uuid.UUID | str, token: str | None) -> Trigger:
    """The webhook trigger ``trigger_id`` if ``token`` is its token; else :class:`Unauthenticated`.

    An unknown id and a trigger of another kind are refused the same way.
    """
    try:
        trigger = triggers.get_trigger(session, trigger_id)
    except NotFoundError:
        raise Unauthenticated(REFUSED) from None
    if trigger.kind != "webhook" or not triggers.check_token(trigger, token):
        raise Unauthenticated(REFUSED)
    return trigger


def receive(
    session: Session,
    trigger_id: uuid.UUID | str,
    token: str | None,
    raw_body: bytes,
    headers: Iterable[tuple[str, str]],
    *,
    idempotency_key: str | None = None,
) -> firing.Started:
    """Start a run of the webhook trigger with the JSON object ``raw_body`` (see the module)."""
    trigger = authenticate(session, trigger_id, token)
    if not trigger.enabled:
        raise ConflictError(f"trigger {trigger.name!r} is disabled")
    limit = trigger.config.get("max_body_bytes")
    if limit is not None and len(raw_body) > limit:
        raise PayloadTooLarge(
            f"is {len(raw_body)} bytes; this webhook takes at most {limit}", field="body"
        )
    variables = {"body": _json_object(raw_body), "headers": _headers(headers)}
    return firing.start_run(session, trigger.id, variables, idempotency_key=idempotency_key)


def _json_object(raw_body: bytes) -> dict[str, Any]:
    if not raw_body.strip():
        return {}
    try:
        body = json.loads(raw_body)
    except ValueError as exc:  # UnicodeDecodeError included
        raise MalformedBody(f"is not valid JSON: {exc}", field="body") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"must be a JSON object, not {_JSON_TYPES[type(body)]}", field="body")
    return body


def _headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-case names, repeated ones joined with ", " (RFC 9110), the token left out."""
    found: dict[str, str] = {}
    for name, value in headers:
        name = name.lower()
        if name == TOKEN_HEADER.lower():
            continue
        found[name] = f"{found[name]}, {value}" if name in found else value
    return found
