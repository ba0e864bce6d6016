"""The ``workflows`` and ``conditions`` RPC services, called as ``nameko shell`` would."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from nameko.exceptions import RemoteError
from nameko.standalone.rpc import ClusterRpcClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from autostep import queries
from autostep.db import unit_of_work
from autostep.gateway.workflows import ConditionsService, WorkflowsService
from autostep.models import Job, Project, Workflow
from autostep.nameko_runtime import log_expected_errors_in_one_line, nameko_config
from autostep.settings import get_settings
from autostep.validation import payload_size

FIBO = {
    "name": "fib",
    "steps": [
        {"name": "first", "function": "fibo", "next": [{"to": "second"}]},
        {"name": "second", "function": "fibo", "input": {"n": "prev.n + 1"}},
    ],
}


@pytest.fixture
def rpc(runner_factory: Any, platform_env: dict[str, str]) -> Iterator[Any]:
    config = nameko_config()
    log_expected_errors_in_one_line()
    runner = runner_factory(config, WorkflowsService, ConditionsService)
    runner.start()
    with ClusterRpcClient(uri=config["AMQP_URI"], timeout=30) as client:
        yield client


def test_a_client_creates_a_project_publishes_starts_and_reads_a_run(
    rpc: Any, relay: Any, functions: Any, wait_for_job: Any
) -> None:
    project = rpc.workflows.create_project("rpc-demo")
    published = rpc.workflows.publish_workflow("rpc-demo", FIBO)
    job = rpc.workflows.start_job("rpc-demo", "fib", {"n": 10})

    wait_for_job(job["id"])
    view = rpc.workflows.get_job(job["id"])

    assert project["name"] == "rpc-demo"
    assert published["number"] == 1
    assert job["status"] == "running" and job["trigger"] == "rpc"
    assert view["status"] == "succeeded"
    assert view["output"] == {"n": 11, "value": 89}
    assert [p["step"] for p in view["processes"]] == ["first", "second"]
    assert job["id"] in [j["id"] for j in rpc.workflows.list_jobs()]


def test_a_workflow_reads_back_with_its_steps_and_transitions_per_version(rpc: Any) -> None:
    rpc.workflows.create_project("rpc-read")
    rpc.workflows.publish_workflow("rpc-read", FIBO)
    branching = {
        "name": "fib",
        "steps": [
            {
                "name": "first",
                "function": "fibo",
                "retries": 2,
                "next": [{"to": "big", "when": "output.value > 50"}, {"to": "small"}],
            },
            {"name": "big", "function": "fibo", "input": {"n": "prev.n + 1"}},
            {"name": "small", "function": "noop"},
        ],
    }
    rpc.workflows.publish_workflow("rpc-read", branching)

    newest = rpc.workflows.get_workflow("rpc-read", "fib")
    first = rpc.workflows.get_workflow("rpc-read", "fib", 1)

    assert newest["versions"] == [1, 2]
    assert newest["version"]["number"] == 2
    assert [s["name"] for s in newest["version"]["steps"]] == ["first", "big", "small"]
    head = newest["version"]["steps"][0]
    assert head["start"] is True and head["retries"] == 2
    assert head["next"] == [
        {"to": "big", "when": "output.value > 50"},
        {"to": "small", "when": None},
    ]
    assert newest["version"]["steps"][1]["input"] == {"n": "prev.n + 1"}
    assert [s["name"] for s in first["version"]["steps"]] == ["first", "second"]
    assert first["version"]["steps"][0]["next"] == [{"to": "second", "when": None}]
    with pytest.raises(RemoteError) as missing:
        rpc.workflows.get_workflow("rpc-read", "fib", 3)
    assert missing.value.exc_type == "NotFoundError"


def test_errors_reach_the_client_with_their_type_and_field(rpc: Any) -> None:
    rpc.workflows.create_project("rpc-errors")
    broken = {**FIBO, "steps": [{"name": "a", "function": "fibo", "next": [{"to": "zz"}]}]}

    with pytest.raises(RemoteError) as bad_definition:
        rpc.workflows.publish_workflow("rpc-errors", broken)
    with pytest.raises(RemoteError) as duplicate:
        rpc.workflows.create_project("rpc-errors")
    with pytest.raises(RemoteError) as missing:
        rpc.workflows.get_job("00000000-0000-0000-0000-000000000000")

    assert bad_definition.value.exc_type == "DefinitionError"
    assert "steps[0].next[0].to" in str(bad_definition.value)
    assert duplicate.value.exc_type == "ConflictError"
    assert missing.value.exc_type == "NotFoundError"


def test_conditions_can_be_tried_on_a_sample(rpc: Any) -> None:
    sample = {"output": {"value": 89}, "input": {"limit": 50}}
    assert rpc.conditions.test("output.value > input.limit", sample) == {
        "ok": True,
        "result": True,
    }
    failed = rpc.conditions.test("output.value >", sample)
    assert failed["ok"] is False and "Syntax error" in failed["error"]


def _count(session_factory: Any, model: Any) -> int:
    with unit_of_work(session_factory) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_bad_arguments_are_refused_naming_the_field_and_nothing_is_written(
    rpc: Any, session_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rpc.workflows.create_project("rpc-limits")
    rpc.workflows.publish_workflow("rpc-limits", FIBO)
    monkeypatch.setattr(get_settings(), "max_payload_bytes", 100)
    before = [_count(session_factory, model) for model in (Project, Workflow, Job)]
    calls = {
        "name: String should have at least 1 character": lambda: rpc.workflows.create_project(""),
        "name: String should have at most 100 characters": lambda: rpc.workflows.create_project(
            "p" * 201
        ),
        "description: String should have at most 2000 characters": lambda: (
            rpc.workflows.create_project("fine", "d" * 2001)
        ),
        "input: must be a JSON object, not an array": lambda: rpc.workflows.start_job(
            "rpc-limits", "fib", [1, 2]
        ),
        "input: is 110 bytes as JSON, more than the limit of 100 bytes": lambda: (
            rpc.workflows.start_job("rpc-limits", "fib", {"s": "x" * 102})
        ),
        "limit: Input should be greater than or equal to 1": lambda: rpc.workflows.list_jobs(-1),
        "limit: Input should be less than or equal to 500": lambda: rpc.workflows.list_jobs(501),
        "version: Input should be greater than or equal to 1": lambda: rpc.workflows.get_workflow(
            "rpc-limits", "fib", 0
        ),
        f"definition: is {payload_size(FIBO)} bytes as JSON, more than the limit of 100 bytes": (
            lambda: rpc.workflows.publish_workflow("rpc-limits", FIBO)
        ),
        "expression: Input should be a valid string": lambda: rpc.conditions.test(1, {}),
        "input: holds the character U+0000, which PostgreSQL cannot store": lambda: (
            rpc.workflows.start_job("rpc-limits", "fib", {"s": "a\u0000b"})
        ),
        "steps[0].name: String should have at least 1 character": lambda: (
            rpc.workflows.publish_workflow("rpc-limits", {"name": "w", "steps": [{"name": ""}]})
        ),
    }
    for message, call in calls.items():
        with pytest.raises(RemoteError) as refused:
            call()
        assert refused.value.exc_type in ("InvalidInput", "DefinitionError"), message
        assert refused.value.value == message
    assert [_count(session_factory, model) for model in (Project, Workflow, Job)] == before


def test_an_unexpected_database_error_reaches_the_caller_as_a_short_error_logged_once(
    rpc: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_listing(session: Session, **_: Any) -> list[dict[str, Any]]:
        """A listing with a bug: PostgreSQL refuses its statement."""
        return [dict(row._mapping) for row in session.execute(text("SELECT 1 / 0 AS oops"))]

    monkeypatch.setattr(queries, "list_jobs", broken_listing)

    with caplog.at_level(logging.WARNING), pytest.raises(RemoteError) as failed:
        rpc.workflows.list_jobs()

    assert failed.value.exc_type == "InternalError"
    message = failed.value.value
    assert message.startswith("list_jobs failed unexpectedly; the server logged it as [")
    assert "SELECT" not in message and "division" not in message
    reference = message[message.index("[") : message.index("]") + 1]
    # Logged in full once (traceback and statement), and once more in one line by nameko.
    mentions = [r for r in caplog.records if reference in r.getMessage()]
    assert [r.name for r in mentions] == ["autostep.gateway.workflows", "nameko.containers"]
    assert [r.exc_info is not None for r in mentions] == [True, False]
    assert "division by zero" in caplog.text and "SELECT 1 / 0" in caplog.text


def test_a_caller_error_is_logged_in_one_line_by_the_server(
    rpc: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="nameko.containers"):
        with pytest.raises(RemoteError):
            rpc.workflows.get_job("00000000-0000-0000-0000-000000000000")
        with pytest.raises(RemoteError):
            rpc.workflows.list_jobs(0)

    logged = [r for r in caplog.records if r.name == "nameko.containers"]
    assert [r.exc_info for r in logged] == [None, None]
    assert "no job 00000000-0000-0000-0000-000000000000" in logged[0].getMessage()
    assert "limit: Input should be greater than or equal to 1" in logged[1].getMessage()
    assert "Traceback" not in caplog.text
