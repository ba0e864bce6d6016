"""Idempotency keys of job starts: the same key starts one job, however often it is sent.

A client that may send a start twice (a retry after a timeout, a webhook
delivered again) sends an ``Idempotency-Key``. Keys are scoped to a workflow
and kept :data:`KEY_LIFETIME_HOURS` hours. Within the transaction that starts
the job, :func:`claim` inserts the key with a fingerprint of the request
(:func:`fingerprint`) and :func:`record` stores the job it started, so the key
and the job commit together or not at all. A key seen before answers with
its job (the caller starts none); with a different request it is refused with
:class:`~autostep.exceptions.InvalidInput` naming ``Idempotency-Key``. Two
starts with one key at the same moment wait on one row: the second sees the
first's job once it commits. The REST gateway uses it today; the webhook
trigger and ``autostep fire`` are meant to share it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from autostep.exceptions import ConflictError, InvalidInput

__all__ = ["HEADER", "KEY_LIFETIME_HOURS", "claim", "fingerprint", "record"]

#: The HTTP header (and the field named in errors).
HEADER = "Idempotency-Key"
#: Hours a key is remembered; after that it starts a new job.
KEY_LIFETIME_HOURS = 24

_CLAIM = text(
    """
    INSERT INTO idempotency_key (workflow_id, key, fingerprint)
    VALUES (:workflow_id, :key, :fingerprint)
    ON CONFLICT (workflow_id, key) DO UPDATE
        SET fingerprint = excluded.fingerprint, job_id = NULL, created_at = now()
        WHERE idempotency_key.created_at < now() - make_interval(hours => :hours)
    RETURNING 1
    """
)
_EXISTING = text(
    "SELECT fingerprint, job_id FROM idempotency_key "
    "WHERE workflow_id = :workflow_id AND key = :key"
)
_RECORD = text(
    "UPDATE idempotency_key SET job_id = :job_id WHERE workflow_id = :workflow_id AND key = :key"
)


def fingerprint(request: Any) -> str:
    """SHA-256 of ``request`` (JSON data) as canonical JSON: equal requests, equal prints."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim(
    session: Session, workflow_id: uuid.UUID, key: str, request_print: str
) -> uuid.UUID | None:
    """Claim ``key`` for a new job of ``workflow_id``; the job it started before, if any.

    None: the key is new (or expired) and now held by this transaction; start
    the job and :func:`record` it. A job id: the key started that job; start
    none. :class:`InvalidInput` when the key came with another request.
    """
    params = {"workflow_id": workflow_id, "key": key}
    if session.execute(
        _CLAIM, {**params, "fingerprint": request_print, "hours": KEY_LIFETIME_HOURS}
    ).first():
        return None
    seen, job_id = session.execute(_EXISTING, params).one()
    if seen != request_print:
        raise InvalidInput(
            "was used with another request to this workflow; use a new key for a new request",
            field=HEADER,
        )
    if job_id is None:  # cannot happen: the key and its job commit together
        raise ConflictError(f"{HEADER} {key!r} has no job")
    return uuid.UUID(str(job_id))


def record(session: Session, workflow_id: uuid.UUID, key: str, job_id: uuid.UUID) -> None:
    """Store the job that the request holding ``key`` started."""
    session.execute(_RECORD, {"workflow_id": workflow_id, "key": key, "job_id": job_id})
