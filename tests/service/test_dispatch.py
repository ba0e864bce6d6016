"""A runner publishes the step messages it commits; the relay is only the safety net.

The runner's transaction writes the next step's message into the outbox as
due only after a grace (0.3 s here), and publishes it itself right after the
commit (:mod:`autostep.dispatch`), then deletes the row. These tests check
each way that can go:

- all is well: every step message is published once, by the runner, and no
  step row stays behind;
- the runner never publishes (it died between its commit and its publish):
  the relay publishes the rows once their grace has passed, and the run
  finishes;
- the runner publishes but its delete is lost: the relay publishes the same
  rows a second time, and the inbox makes the duplicates no-ops, so every
  step's effect commits once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import eventlet
import pytest

from autostep.dispatch import StepDispatcher, step_dispatcher
from autostep.topology import step_queue_name
from tests.helpers import (
    CHAIN_STEPS,
    Chains,
    assert_chain_done_once,
    environment,
    published_steps,
    step_rows,
)

GRACE = 0.3


@pytest.fixture(autouse=True)
def short_grace(platform_env: dict[str, str]) -> Iterator[None]:
    """Step messages of the runners are the relay's after ``GRACE`` seconds.

    And every step goes through the broker (none runs straight from its row:
    ``tests/service/test_eager.py`` is about those).
    """
    with environment(dispatch_grace_seconds=str(GRACE), eager_steps="0"):
        yield


@pytest.fixture
def dispatcher(platform_env: dict[str, str]) -> StepDispatcher:
    """The step dispatcher of this process's runner."""
    return step_dispatcher(platform_env["AUTOSTEP_AMQP_URI"], platform_env["AUTOSTEP_DATABASE_URL"])


def _ids(chains: Chains, job_id: Any) -> list[str]:
    return [message_id for message_id, _ in published_steps(chains.tap, job_id)]


def test_the_runner_publishes_the_steps_it_commits_once_and_leaves_no_row(
    chains: Chains, dispatcher: StepDispatcher
) -> None:
    published = dispatcher.published

    job_id = chains.start()
    assert chains.wait_for_job(job_id)["status"] == "succeeded"
    eventlet.sleep(3 * GRACE)  # a row left behind would be the relay's by now

    ids = _ids(chains, job_id)
    assert len(ids) == CHAIN_STEPS and len(set(ids)) == CHAIN_STEPS  # each message once
    # the first comes from the run's start (the relay), the others from the runner
    assert dispatcher.published - published >= CHAIN_STEPS - 1
    assert_chain_done_once(chains, job_id)


def test_steps_a_runner_never_published_go_out_through_the_relay(
    chains: Chains, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner dies between its commit and its publish: what it held in memory is gone.
    monkeypatch.setattr(StepDispatcher, "send", lambda self, rows: None)

    job_id = chains.start()

    assert_chain_done_once(chains, job_id)
    assert len(set(_ids(chains, job_id))) == CHAIN_STEPS


def test_a_step_published_by_both_the_runner_and_the_relay_takes_effect_once(
    chains: Chains, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner publishes, and then its delete is lost (a crash right after the confirm).
    monkeypatch.setattr(StepDispatcher, "_delete_confirmed", lambda self: self._confirmed.clear())

    job_id = chains.start()
    assert chains.wait_for_job(job_id)["status"] == "succeeded"
    with eventlet.Timeout(10, AssertionError("the relay did not publish the rows again")):
        while step_rows(chains.session_factory, job_id):
            eventlet.sleep(0.05)
    with eventlet.Timeout(10, AssertionError("the duplicates were not consumed")):
        while chains.tap.messages_in(step_queue_name("t_add")):
            eventlet.sleep(0.05)
    eventlet.sleep(GRACE)  # the last duplicates delivered are handled

    ids = _ids(chains, job_id)
    assert len(set(ids)) == CHAIN_STEPS
    assert len(ids) == CHAIN_STEPS + (CHAIN_STEPS - 1)  # the runner's went out twice
    assert_chain_done_once(chains, job_id)
