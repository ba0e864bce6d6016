"""Workflows end to end through the relay, RabbitMQ and nameko function services."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, text

from autostep.catalog import create_project
from autostep.db import unit_of_work
from autostep.exceptions import InvalidInput
from autostep.models import Job, Process, Project
from autostep.queries import list_jobs
from autostep.runs import start_job
from autostep.settings import get_settings
from tests.helpers import publish, start


def _effects(session_factory: Any, job_id: uuid.UUID | str) -> list[tuple[str, int]]:
    with unit_of_work(session_factory) as session:
        rows = session.execute(
            text(
                "SELECT e.step, e.value FROM test_effect e JOIN process p ON p.id = e.process_id"
                " WHERE p.job_id = :j ORDER BY e.created_at"
            ),
            {"j": str(job_id)},
        ).all()
    return [(row[0], row[1]) for row in rows]


def _chain(name: str, length: int) -> dict[str, Any]:
    steps = [
        {"name": f"s{i}", "function": "t_add", "next": [{"to": f"s{i + 1}"}] if i < length else []}
        for i in range(1, length + 1)
    ]
    return {"name": name, "steps": steps}


def test_linear_workflow_runs_every_step_once_in_order(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    publish(session_factory, project, _chain("linear", 5))
    job_id = start(session_factory, project, "linear", {"value": 10})

    view = wait_for_job(job_id)

    assert view["status"] == "succeeded", view
    assert view["output"] == {"value": 15}
    assert [p["step"] for p in view["processes"]] == ["s1", "s2", "s3", "s4", "s5"]
    assert all(p["status"] == "succeeded" for p in view["processes"])
    assert _effects(session_factory, job_id) == [
        ("s1", 11),
        ("s2", 12),
        ("s3", 13),
        ("s4", 14),
        ("s5", 15),
    ]


def test_condition_chooses_between_two_branches(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    definition = {
        "name": "branching",
        "steps": [
            {
                "name": "first",
                "function": "t_add",
                "next": [
                    {"to": "big", "when": "output.value > input.threshold"},
                    {"to": "small"},
                ],
            },
            {"name": "big", "function": "t_add", "config": {"amount": 100}},
            {"name": "small", "function": "t_add", "config": {"amount": -100}},
        ],
    }
    publish(session_factory, project, definition)
    big = start(session_factory, project, "branching", {"value": 50, "threshold": 10})
    small = start(session_factory, project, "branching", {"value": 1, "threshold": 10})

    big_view, small_view = wait_for_job(big), wait_for_job(small)

    assert [p["step"] for p in big_view["processes"]] == ["first", "big"]
    assert big_view["output"] == {"value": 151}
    assert [p["step"] for p in small_view["processes"]] == ["first", "small"]
    assert small_view["output"] == {"value": -98}


def test_fan_out_runs_one_process_per_item_and_joins(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    definition = {
        "name": "fanout",
        "steps": [
            {
                "name": "each",
                "function": "t_add",
                "for_each": "input.numbers",
                "input": {"value": "item", "amount": "index"},
                "next": [{"to": "join"}],
            },
            {
                "name": "join",
                "function": "t_add",
                "input": {"value": "size(prev.items)"},
            },
        ],
    }
    publish(session_factory, project, definition)
    job_id = start(session_factory, project, "fanout", {"numbers": [10, 20, 30, 40]})

    view = wait_for_job(job_id)

    assert view["status"] == "succeeded", view
    each = [p for p in view["processes"] if p["step"] == "each"]
    parent = [p for p in each if p["kind"] == "fanout"]
    children = sorted((p for p in each if p["kind"] == "task"), key=lambda p: p["item_index"])
    assert len(parent) == 1 and len(children) == 4
    assert [c["output"] for c in children] == [{"value": v} for v in (10, 21, 32, 43)]
    assert parent[0]["output"] == {"items": [{"value": v} for v in (10, 21, 32, 43)]}
    join = [p for p in view["processes"] if p["step"] == "join"]
    assert len(join) == 1
    assert view["output"] == {"value": 5}  # size(items) == 4, plus the default amount 1
    # the join ran after every child had finished
    effects = _effects(session_factory, job_id)
    assert effects[-1] == ("join", 5)
    assert sorted(value for step, value in effects if step == "each") == [10, 21, 32, 43]


def test_retries_then_success_and_retries_then_failure(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    definition = {"name": "flaky", "steps": [{"name": "try", "function": "t_flaky"}]}
    publish(session_factory, project, definition)
    recovers = start(session_factory, project, "flaky", {"fail_times": 2})
    gives_up = start(session_factory, project, "flaky", {"fail_times": 5})
    refused = start(session_factory, project, "flaky", {"permanent": True})

    ok, failed, permanent = map(wait_for_job, (recovers, gives_up, refused))

    assert ok["status"] == "succeeded"
    assert ok["processes"][0]["attempt"] == 3  # t_flaky allows 2 retries
    assert ok["output"] == {"attempts": 3}
    assert failed["status"] == "failed"
    assert failed["processes"][0]["status"] == "failed"
    assert failed["processes"][0]["attempt"] == 3
    assert "attempt 3 fails" in failed["error"]
    assert permanent["status"] == "failed"
    assert permanent["processes"][0]["attempt"] == 1
    assert "refused for good" in permanent["error"]
    # failed attempts left no effect behind
    assert _effects(session_factory, gives_up) == []


def test_a_failed_fan_out_child_fails_its_parent_and_the_job(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    definition = {
        "name": "fanfail",
        "steps": [
            {
                "name": "each",
                "function": "t_flaky",
                "for_each": "input.items",
                "next": [{"to": "after"}],
            },
            {"name": "after", "function": "t_add"},
        ],
    }
    publish(session_factory, project, definition)
    job_id = start(session_factory, project, "fanfail", {"items": [{}, {"permanent": True}, {}]})

    view = wait_for_job(job_id)

    assert view["status"] == "failed"
    assert "refused for good" in view["error"]
    assert not [p for p in view["processes"] if p["step"] == "after"]
    parent = next(p for p in view["processes"] if p["kind"] == "fanout")
    assert parent["status"] == "failed"


def test_workflow_edited_while_a_run_is_in_flight_keeps_its_version(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    publish(session_factory, project, _chain("edited", 3))
    old_job = start(session_factory, project, "edited", {"value": 0})
    # publish v2 (one step, a different amount) while v1's job is running
    publish(
        session_factory,
        project,
        {
            "name": "edited",
            "steps": [{"name": "only", "function": "t_add", "config": {"amount": 7}}],
        },
    )
    new_job = start(session_factory, project, "edited", {"value": 0})

    old_view, new_view = wait_for_job(old_job), wait_for_job(new_job)

    assert [p["step"] for p in old_view["processes"]] == ["s1", "s2", "s3"]
    assert old_view["output"] == {"value": 3}
    assert [p["step"] for p in new_view["processes"]] == ["only"]
    assert new_view["output"] == {"value": 7}
    with unit_of_work(session_factory) as session:
        steps = session.scalars(select(Process.step).where(Process.job_id == old_job)).all()
    assert sorted(steps) == ["s1", "s2", "s3"]


def test_a_slow_step_is_shown_running_while_it_runs(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    from autostep.queries import follow_job

    definition = {"name": "slow", "steps": [{"name": "nap", "function": "delay"}]}
    publish(session_factory, project, definition)
    job_id = start(session_factory, project, "slow", {"seconds": 1.5})
    views = list(follow_job(session_factory, job_id, interval=0.02, timeout=30))
    seen = {view["processes"][0]["status"] for view in views}

    final = views[-1]
    assert "running" in seen  # marked after running_mark_seconds (0.5 s)
    assert final["status"] == "succeeded"
    nap = final["processes"][0]
    assert nap["started_at"] < nap["finished_at"]
    assert nap["version"] == 3  # queued, running, succeeded


def test_a_step_over_its_timeout_is_retried_then_fails_without_effects(
    session_factory: Any, project: str, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    definition = {"name": "sleepy", "steps": [{"name": "nap", "function": "t_sleepy"}]}
    publish(session_factory, project, definition)
    slow = start(session_factory, project, "sleepy", {"seconds": 2.0})
    quick = start(session_factory, project, "sleepy", {"seconds": 0.01})

    slow_view, quick_view = wait_for_job(slow), wait_for_job(quick)

    assert slow_view["status"] == "failed"
    assert slow_view["processes"][0]["attempt"] == 2  # t_sleepy allows one retry
    assert "timed out after 0.2s" in slow_view["error"]
    assert _effects(session_factory, slow) == []  # both attempts rolled back
    assert quick_view["status"] == "succeeded"
    assert _effects(session_factory, quick) == [("nap", 1)]


def test_a_step_output_over_the_payload_limit_fails_the_step_without_retries(
    session_factory: Any,
    project: str,
    relay: Any,
    functions: Any,
    wait_for_job: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pad = {"pad": "x" * 99}
    padded = {"name": "s", "function": "noop", "retries": 3, "backoff": 0, "config": pad}
    publish(session_factory, project, {"name": "big", "steps": [padded]})
    monkeypatch.setattr(get_settings(), "max_payload_bytes", 100)
    # The run's input fits (7 bytes); noop returns it with the pad: 115 bytes.
    job_id = start(session_factory, project, "big", {"n": 1})

    view = wait_for_job(job_id)

    assert view["status"] == "failed"
    [process] = view["processes"]
    assert process["attempt"] == 1
    assert process["error"] == (
        "PermanentError: output of 'noop': is 115 bytes as JSON, more than the limit of 100 bytes"
    )


def test_the_core_refuses_bad_values_before_any_sql(session_factory: Any, project: str) -> None:
    publish(session_factory, project, _chain("refusals", 1))
    with unit_of_work(session_factory) as session:
        before = [session.scalar(select(func.count()).select_from(t)) for t in (Project, Job)]
        refusals = [
            (lambda: create_project(session, ""), "name"),
            (lambda: create_project(session, "p" * 201), "name"),
            (lambda: create_project(session, "two words"), "name"),
            (lambda: create_project(session, "ok", "d" * 2001), "description"),
            (lambda: list_jobs(session, limit=-1), "limit"),
            (lambda: list_jobs(session, limit=501), "limit"),
            (lambda: start_job(session, project, "refusals", [1, 2]), "input"),  # type: ignore[arg-type]
        ]
        for call, field in refusals:
            with pytest.raises(InvalidInput) as refused:
                call()
            assert refused.value.field == field
        after = [session.scalar(select(func.count()).select_from(t)) for t in (Project, Job)]
    assert after == before
