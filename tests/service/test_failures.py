"""Failure paths through the real broker and database, each named by its promise.

- Never ack-and-drop: a step that loses its database connection (while the
  database answers) runs again, and its effect commits once.
- A message that keeps losing its connection is not retried forever: after
  a few tries in the runner it goes back to the queue, RabbitMQ dead-letters
  it after the queue's delivery limit, and the ``deadletters`` service fails
  its process and job with that reason.
- Bounded retries wait as the backoff says, or as long as the function asks
  (``RetryableError(delay=…)``, which ``http_request`` fills from
  ``Retry-After``): the retry's outbox row is due that much later.
- A failed job stops: a fan-out child that fails for good cancels its slow
  siblings, whose effects then never commit.
- An empty fan-out goes straight on to the next step.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import eventlet
from pydantic import BaseModel
from sqlalchemy import select, text

from autostep import RetryableError, StepContext, function
from autostep.db import unit_of_work
from autostep.functions.deadletters import DeadLetterService
from autostep.functions.runner import StepOutcome, run_step
from autostep.functions.service import service_for
from autostep.models import Outbox, Process
from autostep.nameko_runtime import nameko_config
from autostep.sdk import REGISTRY
from tests.helpers import publish, start


def _count(session_factory: Any, sql: str, **params: Any) -> int:
    with unit_of_work(session_factory) as session:
        return int(session.execute(text(sql), params).scalar() or 0)


def _until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    with eventlet.Timeout(timeout, AssertionError("condition not reached in time")):
        while not condition():
            eventlet.sleep(0.05)


# -- never ack-and-drop -------------------------------------------------------


def test_a_step_that_loses_its_database_runs_again_and_takes_effect_once(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    publish(
        session_factory, project, {"name": "cut", "steps": [{"name": "s", "function": "t_cut"}]}
    )
    job_id = start(session_factory, project, "cut", {"times": 1})

    view = wait_for_job(job_id, timeout=20)

    assert view["status"] == "succeeded", view
    assert view["output"] == {"calls": 2}  # the first call lost its connection
    assert view["processes"][0]["attempt"] == 1  # an outage is no failed attempt
    process = view["processes"][0]["id"]
    assert (
        _count(session_factory, "SELECT count(*) FROM test_call WHERE process_id = :p", p=process)
        == 2
    )
    assert (
        _count(session_factory, "SELECT count(*) FROM test_effect WHERE process_id = :p", p=process)
        == 1
    )


class Nothing(BaseModel):
    pass


@function(name="t_always_cut", retries=3)
def always_cut(inp: Nothing, ctx: StepContext) -> Nothing:
    """Loses its database connection on every delivery."""
    ctx.session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
    return Nothing()


def test_a_step_that_always_loses_its_database_is_dead_lettered_and_fails_its_job(
    session_factory: Any,
    project: str,
    delivery_limit: int,
    runner_factory: Any,
    relay: Any,
    wait_for_job: Any,
) -> None:
    # Only this test serves (and so declares the queue of) t_always_cut.
    runner = runner_factory(
        nameko_config(), DeadLetterService, service_for(REGISTRY["t_always_cut"])
    )
    runner.start()
    publish(
        session_factory,
        project,
        {"name": "doomed", "steps": [{"name": "s", "function": "t_always_cut"}]},
    )
    job_id = start(session_factory, project, "doomed", {})

    view = wait_for_job(job_id, timeout=30)

    assert view["status"] == "failed"
    process = view["processes"][0]
    assert process["status"] == "failed"
    assert process["attempt"] == 1  # the function's own retries were never used
    # returned 3 times (each after a few tries in the runner), delivered 4 times
    assert (
        "dead-lettered: delivery_limit on autostep.fn.t_always_cut after 4 deliveries"
        in (view["error"])
    )


# -- bounded retries ------------------------------------------------------------


class Wait(BaseModel):
    delay: float | None = None


@function(name="t_wait", retries=3, backoff=2.0)
def wait(inp: Wait) -> Nothing:
    """Always fails: asking for ``delay`` seconds if given, else with a plain error."""
    if inp.delay is not None:
        raise RetryableError("come back later", delay=inp.delay)
    raise RuntimeError("try again")


def _due_in(session_factory: Any, job_id: uuid.UUID) -> list[timedelta]:
    """For each step row of the job's process, in order: its due time minus its creation."""
    with unit_of_work(session_factory) as session:
        process = session.scalar(select(Process.id).where(Process.job_id == job_id))
        rows = session.scalars(
            select(Outbox)
            .where(Outbox.type == "step", Outbox.aggregate_id == process)
            .order_by(Outbox.seq)
        ).all()
        return [row.available_at - row.created_at for row in rows]


def _fail_once(session_factory: Any, job_id: uuid.UUID) -> StepOutcome:
    """Deliver the job's newest step message once, as a runner would."""
    with unit_of_work(session_factory) as session:
        process = session.scalar(select(Process.id).where(Process.job_id == job_id))
        row = session.scalar(
            select(Outbox)
            .where(Outbox.type == "step", Outbox.aggregate_id == process)
            .order_by(Outbox.seq.desc())
            .limit(1)
        )
        assert row is not None
        payload, row_id = row.payload, str(row.id)
    return run_step(session_factory, REGISTRY["t_wait"], payload, row_id, consumer="fn_t_wait")


def test_retries_wait_as_the_backoff_says_or_as_long_as_the_function_asks(
    session_factory: Any, project: str
) -> None:
    publish(
        session_factory, project, {"name": "waits", "steps": [{"name": "s", "function": "t_wait"}]}
    )
    backoff = start(session_factory, project, "waits", {})
    asked = start(session_factory, project, "waits", {"delay": 7})

    outcomes = [_fail_once(session_factory, backoff), _fail_once(session_factory, backoff)]
    outcomes.append(_fail_once(session_factory, asked))

    assert outcomes == [StepOutcome.RETRYING] * 3
    first, retry_1, retry_2 = _due_in(session_factory, backoff)
    assert first < timedelta(seconds=0.5)
    assert abs(retry_1 - timedelta(seconds=2)) < timedelta(seconds=0.5)  # backoff
    assert abs(retry_2 - timedelta(seconds=4)) < timedelta(seconds=0.5)  # doubled
    assert abs(_due_in(session_factory, asked)[1] - timedelta(seconds=7)) < timedelta(seconds=0.5)


# -- a failed job stops ---------------------------------------------------------


def test_a_failing_fan_out_child_cancels_its_slow_siblings_and_their_effects(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    definition = {
        "name": "fancancel",
        "steps": [{"name": "each", "function": "t_item", "for_each": "input.items"}],
    }
    publish(session_factory, project, definition)
    items = [{"sleep": 1.0, "report": True}, {"fail": True}, {"sleep": 1.0, "report": True}]
    job_id = start(session_factory, project, "fancancel", {"items": items})

    view = wait_for_job(job_id)
    children = sorted(
        (p for p in view["processes"] if p["kind"] == "task"), key=lambda p: p["item_index"]
    )
    slow = [p["id"] for p in children if p["item_index"] != 1]
    # the slow functions finish after the job failed; their transactions must not commit
    _until(
        lambda: (
            _count(
                session_factory,
                "SELECT count(*) FROM test_call WHERE process_id = ANY(CAST(:p AS uuid[]))",
                p=slow,
            )
            == 2
        )
    )
    eventlet.sleep(0.3)  # time for a commit that must not happen

    assert view["status"] == "failed"
    assert [p["status"] for p in children] == ["cancelled", "failed", "cancelled"]
    assert (
        _count(
            session_factory,
            "SELECT count(*) FROM test_effect WHERE process_id = ANY(CAST(:p AS uuid[]))",
            p=slow,
        )
        == 0
    )
    with unit_of_work(session_factory) as session:
        statuses = session.scalars(
            select(Process.status).where(Process.id.in_([uuid.UUID(p) for p in slow]))
        ).all()
    assert sorted(map(str, statuses)) == ["cancelled", "cancelled"]


def test_an_empty_fan_out_goes_straight_on_to_the_next_step(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    definition = {
        "name": "emptyfan",
        "steps": [
            {
                "name": "each",
                "function": "t_item",
                "for_each": "input.items",
                "next": [{"to": "after"}],
            },
            {"name": "after", "function": "t_add", "input": {"value": "size(prev.items)"}},
        ],
    }
    publish(session_factory, project, definition)

    view = wait_for_job(start(session_factory, project, "emptyfan", {"items": []}))

    assert view["status"] == "succeeded"
    assert view["output"] == {"value": 1}
    parent = next(p for p in view["processes"] if p["kind"] == "fanout")
    assert parent["status"] == "succeeded" and parent["output"] == {"items": []}
    assert [p["step"] for p in view["processes"] if p["kind"] == "task"] == ["after"]
