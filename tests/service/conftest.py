"""Service-tier fixtures: the relay and function services in this process.

The relay runs in a green thread and the function services in nameko
containers, all against the session's real PostgreSQL database and RabbitMQ
vhost, as in production but in one process.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import eventlet
import pytest

from autostep import queries
from autostep.db import unit_of_work
from autostep.nameko_runtime import nameko_config
from autostep.relay import Relay
from autostep.settings import get_settings
from autostep.topology import STEPS_EXCHANGE
from tests.helpers import Chains, Tap, chain_definition, publish, start


@pytest.fixture
def relay(platform_env: dict[str, str]) -> Iterator[Relay]:
    relay = Relay()
    thread = eventlet.spawn(relay.run)
    yield relay
    relay.stop()
    thread.wait()


@pytest.fixture
def functions(platform_env: dict[str, str], runner_factory: Any, effect_table: None) -> Any:
    """Every test and built-in function and the dead-letter service, served by nameko."""
    import autostep.functions.builtins as builtins
    import tests.stepfuncs as stepfuncs
    from autostep.functions.deadletters import DeadLetterService
    from autostep.functions.service import services_for

    services = [DeadLetterService, *services_for(stepfuncs.__name__).values()]
    services += services_for(builtins.__name__).values()
    runner = runner_factory(nameko_config(), *services)
    runner.start()
    return runner


@pytest.fixture
def project(session_factory: Any) -> str:
    from autostep.catalog import create_project

    name = f"p-{uuid.uuid4().hex[:8]}"
    with unit_of_work(session_factory) as session:
        create_project(session, name)
    return name


@pytest.fixture
def wait_for_job(session_factory: Any) -> Callable[..., dict[str, Any]]:
    """Wait until a job has finished; its final view."""

    def wait(job_id: uuid.UUID | str, timeout: float = 30.0) -> dict[str, Any]:
        return queries.wait_for_job(session_factory, job_id, timeout=timeout)

    return wait


@pytest.fixture
def delivery_limit(platform_env: dict[str, str]) -> Iterator[int]:
    """Step queues declared during the test allow 3 deliveries of a message."""
    os.environ["AUTOSTEP_DELIVERY_LIMIT"] = "3"
    get_settings.cache_clear()
    yield 3
    del os.environ["AUTOSTEP_DELIVERY_LIMIT"]
    get_settings.cache_clear()


@pytest.fixture
def chains(
    functions: Any,
    relay: Relay,
    session_factory: Any,
    project: str,
    amqp_uri: str,
    wait_for_job: Callable[..., dict[str, Any]],
) -> Iterator[Chains]:
    name = f"chain-{uuid.uuid4().hex[:6]}"
    publish(session_factory, project, chain_definition(name))
    tap = Tap(amqp_uri, [(STEPS_EXCHANGE, "t_add")])
    yield Chains(
        lambda: start(session_factory, project, name, {"value": 0}),
        tap,
        session_factory,
        wait_for_job,
    )
    tap.close()
