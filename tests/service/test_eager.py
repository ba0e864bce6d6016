"""The lone next step of a chain runs in the runner that wrote it, without the broker.

The runner's transaction writes the next step's message into the outbox as
usual (due only after a grace, 0.3 s here). When that runner serves the
step's function and the function has no message waiting, it runs the step
at once, straight from the row: its claim deletes the row in the step's own
transaction. These tests check both ways that can go:

- all is well: only the run's first step message (the relay's) passes the
  broker, no row is left, every effect commits once;
- the step run here never commits (its database connection keeps failing,
  as a runner that dies would leave it): its row is still in the outbox,
  the relay publishes it after the grace, and the run finishes through the
  broker, every effect once.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import eventlet
import pytest
from sqlalchemy import func, select

from autostep.db import unit_of_work
from autostep.exceptions import DatabaseUnavailable
from autostep.functions import service
from autostep.functions.entrypoint import StepConsumer
from autostep.models import Outbox
from autostep.relay import Relay
from autostep.settings import get_settings
from autostep.topology import STEPS_EXCHANGE, step_queue_name
from tests.helpers import Tap, effects_by_step, publish, start

GRACE = 0.3
STEPS = 4


@pytest.fixture
def grace(platform_env: dict[str, str]) -> Iterator[float]:
    """Step rows of the runners are the relay's after ``GRACE`` seconds."""
    os.environ["AUTOSTEP_DISPATCH_GRACE_SECONDS"] = str(GRACE)
    get_settings.cache_clear()
    yield GRACE
    del os.environ["AUTOSTEP_DISPATCH_GRACE_SECONDS"]
    get_settings.cache_clear()


@pytest.fixture
def tap(amqp_uri: str) -> Iterator[Tap]:
    consumer = Tap(amqp_uri, [(STEPS_EXCHANGE, "t_add")])
    yield consumer
    consumer.close()


@pytest.fixture
def chain(session_factory: Any, project: str) -> Callable[[], uuid.UUID]:
    """Starts a run of ``STEPS`` ``t_add`` steps one after another; its job id."""
    name = f"eager-{uuid.uuid4().hex[:6]}"
    steps: list[dict[str, Any]] = [{"name": f"s{i}", "function": "t_add"} for i in range(STEPS)]
    for step, following in itertools.pairwise(steps):
        step["next"] = [{"to": following["name"]}]
    publish(session_factory, project, {"name": name, "steps": steps})
    return lambda: start(session_factory, project, name, {"value": 0})


def _consumer(functions: Any) -> StepConsumer:
    return next(
        entrypoint
        for container in functions.containers
        for entrypoint in container.entrypoints
        if isinstance(entrypoint, StepConsumer)
        and entrypoint.queue.name == step_queue_name("t_add")
    )


def _published(tap: Tap, job_id: uuid.UUID) -> list[str]:
    """The steps of ``job_id`` whose messages passed the broker (other tests' may too)."""
    bodies = [json.loads(message.body) for message in tap.messages()]
    return [body["step"] for body in bodies if body["job_id"] == str(job_id)]


def _step_rows(session_factory: Any, job_id: uuid.UUID) -> int:
    with unit_of_work(session_factory) as session:
        found = session.scalar(
            select(func.count()).where(
                Outbox.type == "step", Outbox.payload["job_id"].astext == str(job_id)
            )
        )
        return int(found or 0)


def test_a_chain_runs_its_next_steps_here_without_the_broker_and_leaves_no_row(
    grace: float,
    functions: Any,
    relay: Relay,
    tap: Tap,
    chain: Callable[[], uuid.UUID],
    session_factory: Any,
    wait_for_job: Callable[..., dict[str, Any]],
) -> None:
    consumer = _consumer(functions)
    ran_here = consumer.ran_here

    job_id = chain()
    assert wait_for_job(job_id)["status"] == "succeeded"
    eventlet.sleep(3 * grace)  # a row left behind would be the relay's by now

    assert _published(tap, job_id) == ["s0"]  # the start's, through the relay
    assert consumer.ran_here - ran_here >= STEPS - 1
    assert _step_rows(session_factory, job_id) == 0
    assert effects_by_step(session_factory, job_id) == [(f"s{i}", 1) for i in range(STEPS)]


def test_a_step_run_here_that_never_commits_goes_out_through_the_relay(
    grace: float,
    functions: Any,
    relay: Relay,
    tap: Tap,
    chain: Callable[[], uuid.UUID],
    session_factory: Any,
    wait_for_job: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = service.run_step

    def lose_the_database(*args: Any, consumed_row: uuid.UUID | None = None, **kwargs: Any) -> Any:
        if consumed_row is not None:  # run here: its transaction never commits
            raise DatabaseUnavailable("database unavailable: the connection is lost")
        return original(*args, **kwargs)

    monkeypatch.setattr(service, "run_step", lose_the_database)

    job_id = chain()

    assert wait_for_job(job_id)["status"] == "succeeded"
    assert _published(tap, job_id) == [f"s{i}" for i in range(STEPS)]  # each once, by the relay
    assert _step_rows(session_factory, job_id) == 0
    assert effects_by_step(session_factory, job_id) == [(f"s{i}", 1) for i in range(STEPS)]
