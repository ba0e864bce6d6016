"""The scheduler service: a trigger written through the core becomes a CronJob via its event."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import eventlet
import pytest

from autostep import triggers
from autostep.db import unit_of_work
from autostep.nameko_runtime import nameko_config
from autostep.scheduler import service
from autostep.scheduler.cronjobs import TRIGGER_ID_LABEL
from autostep.settings import get_settings
from tests.helpers import publish
from tests.kube_fake import FakeApiServer

NAMESPACE = "autostep-service-test"


@pytest.fixture
def api_server(platform_env: dict[str, str]) -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        env = {
            "AUTOSTEP_SCHEDULER_KUBE_HOST": server.url,
            "AUTOSTEP_SCHEDULER_NAMESPACE": NAMESPACE,
        }
        os.environ.update(env)
        get_settings.cache_clear()
        service._clients.clear()
        yield server
        for key in env:
            del os.environ[key]
        get_settings.cache_clear()
        service._clients.clear()


def wait_for(check: Any, seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        eventlet.sleep(0.05)
    raise AssertionError("the condition did not come true")


def test_a_new_cron_trigger_becomes_a_cronjob_through_its_event(
    api_server: FakeApiServer,
    runner_factory: Any,
    relay: Any,
    session_factory: Any,
    project: str,
) -> None:
    runner = runner_factory(nameko_config(), service.SchedulerService)
    runner.start()  # its resync timer first fires after a minute: only the event can do it
    publish(session_factory, project, {"name": "w", "steps": [{"name": "a", "function": "t_noop"}]})
    with unit_of_work(session_factory) as session:
        created = triggers.create_trigger(
            session, project, "w", "nightly", "cron", {"schedule": "30 2 * * *"}
        )
        trigger_id = str(created.trigger.id)

    def cronjob() -> dict[str, Any] | None:
        for body in api_server.cluster.cronjobs(NAMESPACE).values():
            if body["metadata"]["labels"][TRIGGER_ID_LABEL] == trigger_id:
                return body
        return None

    body = wait_for(cronjob)
    assert body["spec"]["schedule"] == "30 2 * * *"
