"""The lone next step of a chain runs in the runner that wrote it, without the broker.

The runner's transaction writes the next step's message into the outbox as
usual (due only after a grace, 0.3 s here). When that runner serves the
step's function and holds no other message of it, it runs the step at
once, straight from the row: its claim deletes the row in the step's own
transaction. These tests check both ways that can go:

- all is well: only the run's first step message (the relay's) passes the
  broker, no row is left, every effect commits once;
- the step run here never commits (its database connection keeps failing,
  as a runner that dies would leave it): its row is still in the outbox,
  the relay publishes it after the grace, and the run finishes through the
  broker, every effect once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import eventlet
import pytest

from autostep.exceptions import DatabaseUnavailable
from autostep.functions import service
from autostep.functions.entrypoint import StepConsumer
from autostep.topology import step_queue_name
from tests.helpers import CHAIN_STEPS, Chains, assert_chain_done_once, environment, published_steps

GRACE = 0.3


@pytest.fixture(autouse=True)
def short_grace(platform_env: dict[str, str]) -> Iterator[None]:
    """Step rows of the runners are the relay's after ``GRACE`` seconds."""
    with environment(dispatch_grace_seconds=str(GRACE)):
        yield


def _consumer(functions: Any) -> StepConsumer:
    return next(
        entrypoint
        for container in functions.containers
        for entrypoint in container.entrypoints
        if isinstance(entrypoint, StepConsumer)
        and entrypoint.queue.name == step_queue_name("t_add")
    )


def test_a_chain_runs_its_next_steps_here_without_the_broker_and_leaves_no_row(
    chains: Chains, functions: Any
) -> None:
    consumer = _consumer(functions)
    ran_here = consumer.ran_here

    job_id = chains.start()
    assert chains.wait_for_job(job_id)["status"] == "succeeded"
    eventlet.sleep(3 * GRACE)  # a row left behind would be the relay's by now

    steps = [step for _, step in published_steps(chains.tap, job_id)]
    assert steps == ["s0"]  # the start's, through the relay
    assert consumer.ran_here - ran_here >= CHAIN_STEPS - 1
    assert_chain_done_once(chains, job_id)


def test_a_step_run_here_that_never_commits_goes_out_through_the_relay(
    chains: Chains, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = service.run_step

    def lose_the_database(*args: Any, consumed_row: uuid.UUID | None = None, **kwargs: Any) -> Any:
        if consumed_row is not None:  # run here: its transaction never commits
            raise DatabaseUnavailable("database unavailable: the connection is lost")
        return original(*args, **kwargs)

    monkeypatch.setattr(service, "run_step", lose_the_database)

    job_id = chains.start()

    assert_chain_done_once(chains, job_id)
    steps = [step for _, step in published_steps(chains.tap, job_id)]
    assert steps == [f"s{i}" for i in range(CHAIN_STEPS)]  # each once, by the relay
