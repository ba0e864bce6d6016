"""The ``workflows`` and ``conditions`` RPC services, called as ``nameko shell`` would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from nameko.exceptions import RemoteError
from nameko.standalone.rpc import ClusterRpcClient

from autostep.gateway.workflows import ConditionsService, WorkflowsService
from autostep.nameko_runtime import nameko_config

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
