"""Step functions the tests run: effects recorded in the step's own transaction.

``test_effect`` rows are written in the step's transaction, so they count
the effects that committed. ``test_call`` rows are written on a connection of
their own, outside it, so they count every call, rolled back or not. A
``test_gate`` row opens the gate of that name for ``t_gated``.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from autostep import PermanentError, RetryableError, StepContext, function
from autostep.functions.service import services_for
from autostep.settings import libpq_dsn

EFFECT_TABLE = """
CREATE TABLE IF NOT EXISTS test_effect (
    process_id uuid NOT NULL,
    step text NOT NULL,
    value bigint,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS test_call (
    process_id uuid NOT NULL,
    step text NOT NULL,
    attempt int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS test_gate (name text PRIMARY KEY)
"""


class Number(BaseModel):
    model_config = ConfigDict(extra="allow")
    value: int = 0


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class Flaky(BaseModel):
    model_config = ConfigDict(extra="allow")
    fail_times: int = 0
    permanent: bool = False


def _record(ctx: StepContext, value: int) -> None:
    ctx.session.execute(
        text("INSERT INTO test_effect (process_id, step, value) VALUES (:p, :s, :v)"),
        {"p": ctx.process_id, "s": ctx.step, "v": value},
    )


@function(name="t_add")
def add(inp: Number, ctx: StepContext) -> Number:
    """Adds ``amount`` (default 1) to ``value`` and records the step's effect."""
    extra: dict[str, Any] = inp.model_extra or {}
    value = inp.value + int(extra.get("amount", 1))
    _record(ctx, value)
    return Number(value=value)


@function(name="t_flaky", retries=2, backoff=0.05)
def flaky(inp: Flaky, ctx: StepContext) -> Loose:
    """Fails its first ``fail_times`` attempts (permanently if ``permanent``)."""
    if inp.permanent:
        raise PermanentError("refused for good")
    if ctx.attempt <= inp.fail_times:
        raise RetryableError(f"attempt {ctx.attempt} fails")
    _record(ctx, ctx.attempt)
    return Loose(attempts=ctx.attempt)


class Nap(BaseModel):
    seconds: float


@function(name="t_sleepy", retries=1, backoff=0.05, timeout=0.2)
def sleepy(inp: Nap, ctx: StepContext) -> Loose:
    """Sleeps (cooperatively, under nameko) past its 0.2 s timeout if told to."""
    _record(ctx, 1)
    time.sleep(inp.seconds)
    return Loose(slept=inp.seconds)


@function(name="t_crash")
def crash(inp: Loose) -> Loose:
    """Fails with an ordinary exception: retried by the default policy."""
    raise ZeroDivisionError("boom")


def _record_call(ctx: StepContext) -> int:
    """Record this call outside the step's transaction; the calls of this process so far.

    On a connection of its own, not one from the runner's pool: a step that
    held one pooled connection and waited for a second could exhaust the pool.
    """
    url = ctx.session.get_bind().engine.url.render_as_string(hide_password=False)
    with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO test_call (process_id, step, attempt) VALUES (%s, %s, %s)",
            (ctx.process_id, ctx.step, ctx.attempt),
        )
        row = conn.execute(
            "SELECT count(*) FROM test_call WHERE process_id = %s", (ctx.process_id,)
        ).fetchone()
    return int(row[0]) if row else 0


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")
    fail: bool = False
    sleep: float = 0.0
    #: Record the call (outside the transaction) once the sleep is over.
    report: bool = False


@function(name="t_item", retries=0)
def item(inp: Item, ctx: StepContext) -> Loose:
    """One fan-out item: fails for good if ``fail``, else sleeps ``sleep`` s and records.

    With ``report`` it also records its call, outside the transaction, once
    its sleep is over.
    """
    if inp.fail:
        raise PermanentError("this item fails")
    time.sleep(inp.sleep)
    if inp.report:
        _record_call(ctx)  # says when its function is done
    _record(ctx, 1)
    return Loose(slept=inp.sleep)


class Cut(BaseModel):
    #: Cut the connection on the first ``times`` calls of this process.
    times: int = 1


@function(name="t_cut", retries=0)
def cut(inp: Cut, ctx: StepContext) -> Loose:
    """Loses its database connection mid-transaction (the server ends it) ``times`` times."""
    calls = _record_call(ctx)
    if calls <= inp.times:
        # the server ends this session: the statement raises an OperationalError
        ctx.session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
    _record(ctx, calls)
    return Loose(calls=calls)


class Locks(BaseModel):
    #: Advisory lock keys, taken in this order.
    keys: list[int] = []


@function(name="t_locks", retries=3)
def locks(inp: Locks, ctx: StepContext) -> Loose:
    """Takes the advisory locks ``keys`` in order in the step's transaction, then records.

    Waits for whoever holds one; the locks go with the transaction. Records
    its call first, outside the transaction.
    """
    calls = _record_call(ctx)
    for key in inp.keys:
        ctx.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    _record(ctx, calls)
    return Loose(calls=calls)


class Gate(BaseModel):
    model_config = ConfigDict(extra="allow")
    gate: str
    value: int = 0


@function(name="t_gated", retries=0)
def gate(inp: Gate, ctx: StepContext) -> Number:
    """Fails for good while the gate ``gate`` is closed; else records ``value`` and passes it on."""
    opened = ctx.session.execute(
        text("SELECT 1 FROM test_gate WHERE name = :name"), {"name": inp.gate}
    ).first()
    if opened is None:
        raise PermanentError(f"gate {inp.gate} is closed")
    _record(ctx, inp.value)
    return Number(value=inp.value)


globals().update(services_for(__name__))
