"""The function registry: which runner serves which function, and what a queued step waits for.

A function runner (``autostep functions run MODULE…``) registers every function
it serves when it starts (:func:`register`: its module, input and output JSON
Schemas and retry policy), refreshes its rows every
``registry_heartbeat_seconds`` (:func:`heartbeat`) and deletes them when it
stops cleanly (:func:`unregister`); the nameko side of that lives in
:mod:`autostep.dependencies`. One runner process is one ``runner`` id
(:func:`new_runner_id`), however many functions it serves.

A function is **live** while at least one of its rows had a heartbeat within
``registry_grace_seconds``. Readers ignore the rest: a runner that died
without unregistering stops being live after the grace, and its rows are
deleted by the next registration or heartbeat of any runner once they are
:data:`STALE_ROWS_KEPT_SECONDS` old. Every time is the database's clock.

What the registry answers:

- publishing warns about steps whose function has no live runner
  (:func:`unserved`), without refusing: runners may start later;
- a queued step whose function has no live runner says why it waits
  (:func:`waiting_reason`, :func:`waiting_reasons`), in the job view and the
  ``process.updated`` events;
- :func:`list_functions` lists the functions with their runners and schemas.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, PydanticUserError
from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from autostep.models import FunctionRunner
from autostep.sdk import FunctionSpec
from autostep.settings import get_settings

__all__ = [
    "RECENTLY_SEEN_SECONDS",
    "STALE_ROWS_KEPT_SECONDS",
    "heartbeat",
    "list_functions",
    "live_functions",
    "new_runner_id",
    "register",
    "unregister",
    "unserved",
    "waiting_reason",
    "waiting_reason_at",
    "waiting_reasons",
]

#: Rows whose last heartbeat is older than this (their runner died) are deleted.
STALE_ROWS_KEPT_SECONDS = 3600.0
#: A function whose last runner was seen this recently reads "no live runner
#: (last seen …)"; after that, or never seen, "no runner serves".
RECENTLY_SEEN_SECONDS = 300.0

#: Process cache of :func:`waiting_reason`: function -> monotonic time until
#: which it counts as live without asking the database again.
_LIVE_UNTIL: dict[str, float] = {}


def new_runner_id() -> str:
    """A runner id for this process: ``<host>:<pid>:<random>``, unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def register(session: Session, runner: str, specs: Iterable[FunctionSpec]) -> None:
    """Record that ``runner`` serves ``specs`` now (insert, or refresh what is there).

    Also deletes the rows of runners dead for :data:`STALE_ROWS_KEPT_SECONDS`.
    """
    rows = [_row(runner, spec) for spec in specs]
    if rows:
        statement = insert(FunctionRunner).values(rows)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[FunctionRunner.function, FunctionRunner.runner],
                set_={
                    "module": statement.excluded.module,
                    "description": statement.excluded.description,
                    "input_schema": statement.excluded.input_schema,
                    "output_schema": statement.excluded.output_schema,
                    "policy": statement.excluded.policy,
                    "heartbeat_at": func.now(),
                },
            )
        )
    _delete_stale(session)


def heartbeat(session: Session, runner: str, functions: Iterable[str]) -> int:
    """Refresh ``heartbeat_at`` of ``runner``'s rows for ``functions``; how many it found.

    Fewer than asked means rows went missing (deleted as stale while the
    runner was paused for long): the caller registers them again. Also
    deletes the rows of long-dead runners.
    """
    refreshed = session.execute(
        update(FunctionRunner)
        .where(FunctionRunner.runner == runner, FunctionRunner.function.in_(list(functions)))
        .values(heartbeat_at=func.now())
        .execution_options(synchronize_session=False)
    )
    _delete_stale(session)
    return int(getattr(refreshed, "rowcount", 0))


def unregister(session: Session, runner: str, functions: Iterable[str] | None = None) -> int:
    """Delete ``runner``'s rows (of ``functions`` only, if given); how many there were."""
    statement = delete(FunctionRunner).where(FunctionRunner.runner == runner)
    if functions is not None:
        statement = statement.where(FunctionRunner.function.in_(list(functions)))
    removed = session.execute(statement.execution_options(synchronize_session=False))
    return int(getattr(removed, "rowcount", 0))


def live_functions(session: Session) -> set[str]:
    """The functions with at least one live runner."""
    grace = timedelta(seconds=get_settings().registry_grace_seconds)
    return set(
        session.scalars(
            select(FunctionRunner.function)
            .where(FunctionRunner.heartbeat_at > func.now() - grace)
            .distinct()
        )
    )


def waiting_reasons(session: Session | Connection, functions: Iterable[str]) -> dict[str, str]:
    """Why a queued step of each of ``functions`` waits, for those without a live runner.

    Functions with a live runner are left out. One query.
    """
    wanted = set(functions)
    if not wanted:
        return {}
    now, last_seen = _last_seen(session, wanted)
    reasons = {}
    for function in sorted(wanted):
        reason = _reason(function, now, last_seen.get(function))
        if reason is not None:
            reasons[function] = reason
    return reasons


def waiting_reason_at(function: str, now: datetime, last_seen: datetime | None) -> str | None:
    """Why a queued step of ``function`` waits, at the database's time ``now``, or None.

    ``last_seen`` is the function's newest runner heartbeat (None: never
    seen), for readers that fetch it with their own rows.
    """
    return _reason(function, now, last_seen)


def waiting_reason(session: Session, function: str) -> str | None:
    """Why a step of ``function`` queued now waits; None when a live runner serves it.

    For the engine, which asks each time it queues a step: a function found
    live is taken as live for ``registry_heartbeat_seconds`` without asking
    the database again, so the steps of served functions cost no query. A
    function without a live runner is asked about every time.
    """
    if _LIVE_UNTIL.get(function, 0.0) > time.monotonic():
        return None
    now, last_seen = _last_seen(session)
    grace = get_settings().registry_grace_seconds
    live_until = time.monotonic() + get_settings().registry_heartbeat_seconds
    for name, seen in last_seen.items():
        if (now - seen).total_seconds() <= grace:
            _LIVE_UNTIL[name] = live_until
    return _reason(function, now, last_seen.get(function))


def unserved(session: Session, definition: Mapping[str, Any]) -> list[str]:
    """Warnings for the steps of ``definition`` whose function has no live runner.

    ``definition`` is a workflow definition as stored (``steps``, each with a
    ``name`` and a ``function``). Each warning names the step and lists the
    functions that are served, e.g. ``steps[2] (ship): no runner serves
    function 'shipp'; served: fibo, noop``.
    """
    steps = [(str(step["name"]), str(step["function"])) for step in definition["steps"]]
    if not steps:
        return []
    now, last_seen = _last_seen(session)
    grace = get_settings().registry_grace_seconds
    served = sorted(name for name, seen in last_seen.items() if _age(now, seen) <= grace)
    listing = ", ".join(served) if served else "none"
    warnings = []
    for index, (step, function) in enumerate(steps):
        reason = _reason(function, now, last_seen.get(function), noun="function ")
        if reason is not None:
            warnings.append(f"steps[{index}] ({step}): {reason}; served: {listing}")
    return warnings


def list_functions(session: Session) -> list[dict[str, Any]]:
    """Every function in the registry, by name, with its live runners and schemas.

    Module, description, schemas and policy are those of the runner heard
    from last. Functions whose runners all died (and whose rows are not yet
    deleted) are listed with ``live`` False and no runners.
    """
    grace = get_settings().registry_grace_seconds
    now = session.scalar(select(func.now()))
    assert now is not None
    rows = session.scalars(
        select(FunctionRunner).order_by(FunctionRunner.function, FunctionRunner.heartbeat_at.desc())
    ).all()
    listed: dict[str, dict[str, Any]] = {}
    for row in rows:
        live = _age(now, row.heartbeat_at) <= grace
        entry = listed.get(row.function)
        if entry is None:
            entry = listed[row.function] = {
                "name": row.function,
                "module": row.module,
                "description": row.description,
                "live": live,
                "runners": [],
                "last_heartbeat": row.heartbeat_at.isoformat(),
                "seconds_since_heartbeat": round(_age(now, row.heartbeat_at), 1),
                "policy": row.policy,
                "input_schema": row.input_schema,
                "output_schema": row.output_schema,
            }
        if live:
            entry["runners"].append(row.runner)
    return list(listed.values())


# -- helpers ------------------------------------------------------------------


def _row(runner: str, spec: FunctionSpec) -> dict[str, Any]:
    return {
        "function": spec.name,
        "runner": runner,
        "module": spec.func.__module__,
        "description": inspect.getdoc(spec.func) or "",
        "input_schema": _schema(spec.input_model),
        "output_schema": _schema(spec.output_model),
        "policy": dataclasses.asdict(spec.policy),
    }


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema; an empty schema (anything) for a model that has none."""
    try:
        return model.model_json_schema()
    except PydanticUserError:
        # A field of a type without a JSON Schema: the function still runs.
        return {}


def _delete_stale(session: Session) -> None:
    cutoff = func.now() - timedelta(seconds=STALE_ROWS_KEPT_SECONDS)
    session.execute(
        delete(FunctionRunner)
        .where(FunctionRunner.heartbeat_at < cutoff)
        .execution_options(synchronize_session=False)
    )


def _last_seen(
    session: Session | Connection, functions: set[str] | None = None
) -> tuple[datetime, dict[str, datetime]]:
    """The database's time now, and the last heartbeat of each function (of ``functions``)."""
    query = select(FunctionRunner.function, func.max(FunctionRunner.heartbeat_at), func.now())
    if functions is not None:
        query = query.where(FunctionRunner.function.in_(functions))
    rows = session.execute(query.group_by(FunctionRunner.function)).all()
    if not rows:
        now = session.scalar(select(func.now()))
        assert now is not None
        return now, {}
    return rows[0][2], {function: seen for function, seen, _ in rows}


def _age(now: datetime, then: datetime) -> float:
    return max((now - then).total_seconds(), 0.0)


def _reason(function: str, now: datetime, seen: datetime | None, noun: str = "") -> str | None:
    """None when ``function`` is live; else what a step of it waits for."""
    if seen is None or _age(now, seen) > RECENTLY_SEEN_SECONDS:
        return f"no runner serves {noun}{function!r}"
    age = _age(now, seen)
    if age <= get_settings().registry_grace_seconds:
        return None
    return f"no live runner for {noun}{function!r} (last seen {_ago(age)} ago)"


def _ago(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
