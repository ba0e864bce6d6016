"""Job control through the real broker and database, each test named by its promise.

- The lock order holds: a storm of fan-out failures never deadlocks.
- Cancel stops a running fan-out: queued children never run, running ones
  roll back their writes, and cancelling twice changes nothing.
- Rerun goes on from the failed step: succeeded steps (and fan-out
  children) are reused, not run again, as the effect table shows.
- A loop that never ends is stopped by the step budget.
- An error in choosing the next step fails the job, not the step before.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import eventlet
import psycopg
import pytest
from sqlalchemy import event, text

from autostep.db import unit_of_work
from autostep.exceptions import ConflictError
from autostep.runs import cancel_job, rerun_job
from tests.helpers import publish, start


def _scalar(session_factory: Any, sql: str, **params: Any) -> Any:
    with unit_of_work(session_factory) as session:
        return session.execute(text(sql), params).scalar()


def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    with eventlet.Timeout(timeout, AssertionError("condition not reached in time")):
        while not condition():
            eventlet.sleep(0.05)


def _effects(session_factory: Any, job_id: uuid.UUID, step: str | None = None) -> list[int]:
    """The values a job's steps recorded in committed transactions."""
    with unit_of_work(session_factory) as session:
        rows = session.execute(
            text(
                "SELECT e.value FROM test_effect e JOIN process p ON p.id = e.process_id "
                "WHERE p.job_id = :job AND (CAST(:step AS text) IS NULL OR e.step = :step) "
                "ORDER BY e.value"
            ),
            {"job": job_id, "step": step},
        )
        return [int(value) for value in rows.scalars()]


def _open_gates(session_factory: Any, *names: str) -> None:
    with unit_of_work(session_factory) as session:
        for name in names:
            session.execute(
                text("INSERT INTO test_gate (name) VALUES (:n) ON CONFLICT DO NOTHING"),
                {"n": name},
            )


# -- the lock order --------------------------------------------------------------


@pytest.fixture
def deadlocks(session_factory: Any) -> Iterator[list[BaseException]]:
    """Every ``DeadlockDetected`` PostgreSQL raises on this process's engine meanwhile.

    The function services run in this process on the same engine, so this sees
    their statements too, whatever their callers then do with the error.
    """
    seen: list[BaseException] = []
    engine = session_factory.kw["bind"]

    def on_error(context: Any) -> None:
        if isinstance(context.original_exception, psycopg.errors.DeadlockDetected):
            seen.append(context.original_exception)

    event.listen(engine, "handle_error", on_error)
    yield seen
    event.remove(engine, "handle_error", on_error)


def test_fan_out_children_failing_at_random_never_deadlock(
    session_factory: Any,
    project: str,
    relay: Any,
    functions: Any,
    wait_for_job: Any,
    deadlocks: list[BaseException],
) -> None:
    """Failing children cancel their siblings while others complete: one lock order, no deadlock.

    A child that fails for good locks the job and cancels its unfinished
    siblings while siblings finishing at the same moment want the same rows.
    Locked in different orders, PostgreSQL breaks the cycle with a
    ``DeadlockDetected``.
    """
    publish(
        session_factory,
        project,
        {
            "name": "storm",
            "steps": [{"name": "each", "function": "t_item", "for_each": "input.items"}],
        },
    )
    shuffle = random.Random(7)
    jobs = []
    for _ in range(8):
        failing = set(shuffle.sample(range(50), 4))
        items = [{"fail": i in failing, "sleep": shuffle.random() * 0.02} for i in range(50)]
        jobs.append(start(session_factory, project, "storm", {"items": items}))
    for job_id in jobs:
        view = wait_for_job(job_id, timeout=60)
        assert view["status"] == "failed"
        assert all(p["status"] in ("succeeded", "failed", "cancelled") for p in view["processes"])
    assert deadlocks == []


# -- cancel --------------------------------------------------------------------------


def test_cancel_stops_a_running_fan_out_and_rolls_back_its_running_steps(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    publish(
        session_factory,
        project,
        {
            "name": "slowfan",
            "steps": [{"name": "each", "function": "t_item", "for_each": "input.items"}],
        },
    )
    items = [{"sleep": 1.5, "report": True} for _ in range(6)]
    job_id = start(session_factory, project, "slowfan", {"items": items})
    running = "SELECT count(*) FROM process WHERE job_id = :job AND status = 'running'"
    _until(lambda: _scalar(session_factory, running + " AND parent_id IS NOT NULL", job=job_id))

    with unit_of_work(session_factory) as session:
        assert cancel_job(session, job_id).status == "cancelled"
    view = wait_for_job(job_id)
    assert view["status"] == "cancelled"
    assert {p["status"] for p in view["processes"]} == {"cancelled"}

    # the running functions finish their work, and their transactions roll back
    calls = "SELECT count(*) FROM test_call c JOIN process p ON p.id = c.process_id"
    _until(lambda: _scalar(session_factory, calls + " WHERE p.job_id = :job", job=job_id) == 6)
    eventlet.sleep(0.5)  # let their transactions end
    assert _effects(session_factory, job_id) == []

    with unit_of_work(session_factory) as session:
        again = cancel_job(session, job_id)
    assert again.status == "cancelled"
    assert wait_for_job(job_id)["version"] == view["version"]


def test_cancel_withdraws_a_queued_retry(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    """A step waiting for its retry is cancelled, and its delayed message never goes out."""
    publish(
        session_factory,
        project,
        {
            "name": "later",
            "steps": [{"name": "s", "function": "t_flaky", "backoff": 60, "retries": 3}],
        },
    )
    job_id = start(session_factory, project, "later", {"fail_times": 1})
    queued_retry = "SELECT count(*) FROM process WHERE job_id = :job AND attempt = 2"
    _until(lambda: _scalar(session_factory, queued_retry, job=job_id) == 1)
    with unit_of_work(session_factory) as session:
        cancel_job(session, job_id)
    assert wait_for_job(job_id)["status"] == "cancelled"
    unsent = (
        "SELECT count(*) FROM outbox o JOIN process p ON p.id = o.aggregate_id "
        "WHERE p.job_id = :job AND o.type = 'step'"
    )
    assert _scalar(session_factory, unsent, job=job_id) == 0


# -- rerun ---------------------------------------------------------------------------


def test_rerun_reuses_the_steps_that_succeeded_and_runs_the_failed_one(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    gate = f"g-{uuid.uuid4().hex[:8]}"
    publish(
        session_factory,
        project,
        {
            "name": "gated",
            "steps": [
                {"name": "a", "function": "t_add", "next": [{"to": "b"}]},
                {
                    "name": "b",
                    "function": "t_gated",
                    "config": {"gate": gate},
                    "next": [{"to": "c"}],
                },
                {"name": "c", "function": "t_add"},
            ],
        },
    )
    first = start(session_factory, project, "gated", {"value": 10})
    failed = wait_for_job(first)
    assert failed["status"] == "failed"
    assert "gate" in failed["error"]
    _open_gates(session_factory, gate)
    with unit_of_work(session_factory) as session:
        second = rerun_job(session, first, trigger="test").id
    view = wait_for_job(second)
    assert view["status"] == "succeeded"
    assert view["output"] == {"value": 12}
    assert view["rerun_of"] == str(first)
    a, b, c = view["processes"]
    assert a["reused_from"] is not None
    assert b["reused_from"] is None and c["reused_from"] is None
    # a ran once, in the first job; b and c once, in the rerun
    assert _effects(session_factory, first) == [11]
    assert _effects(session_factory, second) == [11, 12]
    assert _effects(session_factory, second, "a") == []

    with unit_of_work(session_factory) as session, pytest.raises(ConflictError, match="succeeded"):
        rerun_job(session, second)


def test_rerun_of_a_fan_out_runs_only_the_children_that_did_not_succeed(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    prefix = f"f-{uuid.uuid4().hex[:8]}-"
    publish(
        session_factory,
        project,
        {
            "name": "gatedfan",
            "steps": [
                {
                    "name": "each",
                    "function": "t_gated",
                    "for_each": "input.items",
                    "input": {"gate": "item.gate", "value": "item.value"},
                }
            ],
        },
    )
    items = [{"gate": f"{prefix}{i}", "value": i} for i in range(10)]
    _open_gates(session_factory, *(item["gate"] for item in items if item["value"] not in (2, 7)))
    first = start(session_factory, project, "gatedfan", {"items": items})
    failed = wait_for_job(first)
    assert failed["status"] == "failed"
    succeeded_before = _effects(session_factory, first)
    assert 2 not in succeeded_before and 7 not in succeeded_before

    _open_gates(session_factory, f"{prefix}2", f"{prefix}7")
    with unit_of_work(session_factory) as session:
        second = rerun_job(session, first).id
    view = wait_for_job(second)
    assert view["status"] == "succeeded"
    assert view["output"] == {"items": [{"value": i} for i in range(10)]}
    rerun_effects = _effects(session_factory, second)
    # every item took effect exactly once over both jobs
    assert sorted(succeeded_before + rerun_effects) == list(range(10))
    children = [p for p in view["processes"] if p["parent_id"]]
    reused = {p["item_index"] for p in children if p["reused_from"]}
    assert reused == set(succeeded_before)


def test_a_running_job_cannot_be_rerun(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    publish(
        session_factory,
        project,
        {"name": "napping", "steps": [{"name": "s", "function": "t_item"}]},
    )
    job_id = start(session_factory, project, "napping", {"sleep": 1.0})
    with unit_of_work(session_factory) as session, pytest.raises(ConflictError, match="running"):
        rerun_job(session, job_id)
    assert wait_for_job(job_id)["status"] == "succeeded"


# -- the step budget and transition errors ------------------------------------------


def test_a_loop_that_never_ends_is_stopped_by_the_step_budget(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    publish(
        session_factory,
        project,
        {
            "name": "runaway",
            "max_steps": 15,
            "steps": [
                {
                    "name": "a",
                    "function": "t_add",
                    "next": [{"to": "a", "when": "output.value > 0"}],
                }
            ],
        },
    )
    job_id = start(session_factory, project, "runaway", {"value": 0})
    view = wait_for_job(job_id, timeout=60)
    assert view["status"] == "failed"
    assert "step budget" in view["error"]
    assert len(view["processes"]) == 15
    assert all(p["status"] == "succeeded" for p in view["processes"])
    assert _effects(session_factory, job_id) == list(range(1, 16))


def test_an_error_in_choosing_the_next_step_fails_the_job_and_keeps_the_step_output(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    publish(
        session_factory,
        project,
        {
            "name": "badturn",
            "steps": [
                {
                    "name": "a",
                    "function": "t_add",
                    "next": [{"to": "b", "when": "output.missing > 1"}],
                },
                {"name": "b", "function": "t_add"},
            ],
        },
    )
    job_id = start(session_factory, project, "badturn", {"value": 1})
    view = wait_for_job(job_id)
    assert view["status"] == "failed"
    assert view["error"].startswith("after step 'a': steps[0].next[0].when:")
    (a,) = view["processes"]
    assert a["status"] == "succeeded" and a["output"] == {"value": 2} and a["attempt"] == 1
    assert _effects(session_factory, job_id) == [2]
