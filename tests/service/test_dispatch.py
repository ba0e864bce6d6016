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

import itertools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import eventlet
import pytest
from sqlalchemy import func, select

from autostep.db import unit_of_work
from autostep.dispatch import StepDispatcher, step_dispatcher
from autostep.models import Outbox
from autostep.relay import Relay
from autostep.settings import get_settings
from autostep.topology import STEPS_EXCHANGE, step_queue_name
from tests.helpers import Tap, effects_by_step, publish, start

GRACE = 0.3
STEPS = 4


@pytest.fixture
def grace(platform_env: dict[str, str]) -> Iterator[float]:
    """Step messages of the runners are the relay's after ``GRACE`` seconds.

    And every step goes through the broker (none runs straight from its row:
    ``tests/service/test_eager.py`` is about those).
    """
    os.environ["AUTOSTEP_DISPATCH_GRACE_SECONDS"] = str(GRACE)
    os.environ["AUTOSTEP_EAGER_STEPS"] = "0"
    get_settings.cache_clear()
    yield GRACE
    del os.environ["AUTOSTEP_DISPATCH_GRACE_SECONDS"]
    del os.environ["AUTOSTEP_EAGER_STEPS"]
    get_settings.cache_clear()


@pytest.fixture
def tap(amqp_uri: str) -> Iterator[Tap]:
    """Every step message of ``t_add``, duplicates included."""
    consumer = Tap(amqp_uri, [(STEPS_EXCHANGE, "t_add")])
    yield consumer
    consumer.close()


@pytest.fixture
def chain(session_factory: Any, project: str) -> Callable[[], uuid.UUID]:
    """Starts a run of ``STEPS`` ``t_add`` steps one after another; its job id."""
    name = f"chain-{uuid.uuid4().hex[:6]}"
    steps: list[dict[str, Any]] = [{"name": f"s{i}", "function": "t_add"} for i in range(STEPS)]
    for step, following in itertools.pairwise(steps):
        step["next"] = [{"to": following["name"]}]
    publish(session_factory, project, {"name": name, "steps": steps})
    return lambda: start(session_factory, project, name, {"value": 0})


def _step_rows(session_factory: Any, job_id: uuid.UUID) -> int:
    """Step messages of ``job_id`` still in the outbox."""
    with unit_of_work(session_factory) as session:
        found = session.scalar(
            select(func.count()).where(
                Outbox.type == "step", Outbox.payload["job_id"].astext == str(job_id)
            )
        )
        return int(found or 0)


@dataclass
class Platform:
    """A runner (its dispatcher included) and a relay, with what the tests look at."""

    tap: Tap
    chain: Callable[[], uuid.UUID]
    session_factory: Any
    wait_for_job: Callable[..., dict[str, Any]]
    dispatcher: StepDispatcher


@pytest.fixture
def platform(
    grace: float,
    functions: Any,
    relay: Relay,
    tap: Tap,
    chain: Callable[[], uuid.UUID],
    session_factory: Any,
    platform_env: dict[str, str],
    wait_for_job: Callable[..., dict[str, Any]],
) -> Platform:
    dispatcher = step_dispatcher(
        platform_env["AUTOSTEP_AMQP_URI"], platform_env["AUTOSTEP_DATABASE_URL"]
    )
    return Platform(tap, chain, session_factory, wait_for_job, dispatcher)


def _ids_of(tap: Tap, job_id: uuid.UUID) -> list[str]:
    """The ids of the step messages of ``job_id`` the tap received (rows other tests
    left behind may be published meanwhile)."""
    return [
        message.properties["message_id"]
        for message in tap.messages()
        if json.loads(message.body)["job_id"] == str(job_id)
    ]


def test_the_runner_publishes_the_steps_it_commits_once_and_leaves_no_row(
    platform: Platform,
) -> None:
    published = platform.dispatcher.published

    job_id = platform.chain()
    assert platform.wait_for_job(job_id)["status"] == "succeeded"
    eventlet.sleep(3 * GRACE)  # a row left behind would be the relay's by now

    ids = _ids_of(platform.tap, job_id)
    assert len(ids) == STEPS and len(set(ids)) == STEPS  # each step message once
    # the first comes from the run's start (the relay), the others from the runner
    assert platform.dispatcher.published - published >= STEPS - 1
    _assert_done_once(platform, job_id)


def test_steps_a_runner_never_published_go_out_through_the_relay(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner dies between its commit and its publish: what it held in memory is gone.
    monkeypatch.setattr(StepDispatcher, "send", lambda self, rows: None)

    job_id = platform.chain()

    assert platform.wait_for_job(job_id)["status"] == "succeeded"
    assert len(set(_ids_of(platform.tap, job_id))) == STEPS
    _assert_done_once(platform, job_id)


def test_a_step_published_by_both_the_runner_and_the_relay_takes_effect_once(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner publishes, and then its delete is lost (a crash right after the confirm).
    monkeypatch.setattr(StepDispatcher, "_delete_confirmed", lambda self: self._confirmed.clear())

    job_id = platform.chain()
    assert platform.wait_for_job(job_id)["status"] == "succeeded"
    with eventlet.Timeout(10, AssertionError("the relay did not publish the rows again")):
        while _step_rows(platform.session_factory, job_id):
            eventlet.sleep(0.05)
    with eventlet.Timeout(10, AssertionError("the duplicates were not consumed")):
        while platform.tap.messages_in(step_queue_name("t_add")):
            eventlet.sleep(0.05)
    eventlet.sleep(GRACE)  # the last duplicates delivered are handled

    ids = _ids_of(platform.tap, job_id)
    assert len(set(ids)) == STEPS
    assert len(ids) == STEPS + (STEPS - 1)  # the runner's messages went out twice
    _assert_done_once(platform, job_id)


def _assert_done_once(platform: Platform, job_id: uuid.UUID) -> None:
    """No step row of the job is left, and every step's effect committed once."""
    assert _step_rows(platform.session_factory, job_id) == 0
    effects = effects_by_step(platform.session_factory, job_id)
    assert effects == [(f"s{i}", 1) for i in range(STEPS)]
