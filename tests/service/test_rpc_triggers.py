"""The ``triggers`` RPC service, called as ``nameko shell`` would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from nameko.exceptions import RemoteError
from nameko.standalone.rpc import ClusterRpcClient

from autostep.gateway.triggers import TriggersService
from autostep.nameko_runtime import log_expected_errors_in_one_line, nameko_config
from tests.helpers import publish

DEFINITION = {"name": "w", "steps": [{"name": "a", "function": "t_noop"}]}


@pytest.fixture
def rpc(runner_factory: Any, platform_env: dict[str, str]) -> Iterator[Any]:
    config = nameko_config()
    log_expected_errors_in_one_line()
    runner = runner_factory(config, TriggersService)
    runner.start()
    with ClusterRpcClient(uri=config["AMQP_URI"], timeout=30) as client:
        yield client


def test_manage_triggers_and_start_a_manual_one(
    rpc: Any, session_factory: Any, project: str
) -> None:
    publish(session_factory, project, DEFINITION)
    cron = rpc.triggers.create_trigger(project, "w", "hourly", "cron", {"schedule": "@hourly"})
    button = rpc.triggers.create_trigger(project, "w", "button", "manual", {"input": {"a": 1}})
    hook = rpc.triggers.create_trigger(project, "w", "hook", "webhook")

    assert cron["token"] is None and hook["token"] and hook["path"] == f"/hooks/{hook['id']}"
    listed = rpc.triggers.list_triggers(project=project)
    assert sorted(t["name"] for t in listed) == ["button", "hook", "hourly"]
    assert all("token" not in t for t in listed)
    assert len(rpc.triggers.get_trigger(cron["id"])["next_fire_times"]) == 5
    updated = rpc.triggers.update_trigger(cron["id"], enabled=False)
    assert (updated["enabled"], updated["version"]) == (False, 2)
    job = rpc.triggers.start(button["id"], {"b": 2})
    assert job["trigger"] == "manual" and job["status"] == "running"
    assert rpc.triggers.rotate_token(hook["id"])["token"] != hook["token"]
    rpc.triggers.delete_trigger(hook["id"])

    with pytest.raises(RemoteError) as refused:
        rpc.triggers.create_trigger(project, "w", "bad", "cron", {"schedule": "@reboot"})
    assert refused.value.exc_type == "InvalidInput" and "config.schedule" in str(refused.value)
    with pytest.raises(RemoteError) as refused:
        rpc.triggers.start(cron["id"])
    assert refused.value.exc_type == "ConflictError"
    with pytest.raises(RemoteError) as refused:
        rpc.triggers.get_trigger(hook["id"])
    assert refused.value.exc_type == "NotFoundError"
