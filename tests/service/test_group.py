"""Group commit: several steps in one transaction, a failing one costing only itself.

The first tests hand :func:`autostep.functions.group.run_group` a group of
step messages read from the outbox, as the entrypoint would: each function
writes its effect, one of them then raises. Its write must vanish with its
savepoint while the others' commit once; only it is retried. The last test
runs a burst through the nameko service and checks that messages really
shared transactions, every effect once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import eventlet
import pytest
from eventlet.event import Event
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, text

from autostep import StepContext, function, runs
from autostep.catalog import publish_workflow
from autostep.db import unit_of_work
from autostep.functions.entrypoint import StepConsumer
from autostep.functions.group import GroupBroken, StepGroup, run_group
from autostep.functions.runner import StepOutcome
from autostep.models import Outbox, Process
from autostep.runs import start_job
from autostep.sdk import REGISTRY
from autostep.settings import get_settings
from autostep.topology import step_queue_name
from tests.helpers import until, waiting_on_a_lock
from tests.service.test_exactly_once import called, gates

GROUP = 5
FAILING = 2  # the index of the message whose function raises


class Order(BaseModel):
    model_config = ConfigDict(extra="allow")
    fail: bool = False


@function(name="t_grouped", retries=1, backoff=30)
def grouped(inp: Order, ctx: StepContext) -> Order:
    """Records its effect, then fails if told to (after writing: the write must vanish)."""
    ctx.session.execute(
        text("INSERT INTO test_effect (process_id, step, value) VALUES (:p, :s, 1)"),
        {"p": ctx.process_id, "s": ctx.step},
    )
    if inp.fail:
        raise ValueError("this order fails")
    return inp


def _messages(session_factory: Any, project: str) -> list[tuple[Any, str, uuid.UUID]]:
    """Start ``GROUP`` runs (the ``FAILING``-th fails); their step messages, in order."""
    name = f"grouped-{uuid.uuid4().hex[:6]}"
    found = []
    with unit_of_work(session_factory) as session:
        publish_workflow(
            session, project, {"name": name, "steps": [{"name": "one", "function": "t_grouped"}]}
        )
        for index in range(GROUP):
            job_id = start_job(session, project, name, {"fail": index == FAILING}).id
            process_id = session.scalar(select(Process.id).where(Process.job_id == job_id))
            row = session.scalar(
                select(Outbox).where(Outbox.type == "step", Outbox.aggregate_id == process_id)
            )
            assert row is not None and process_id is not None
            found.append((row.payload, str(row.id), process_id))
    return found


def _group(messages: list[tuple[Any, str, uuid.UUID]]) -> StepGroup:
    pending = [(body, message_id) for body, message_id, _ in messages]
    return StepGroup(lambda: pending.pop(0) if pending else None, size=100, seconds=60)


def _effects(session_factory: Any, process_ids: list[uuid.UUID]) -> list[int]:
    with unit_of_work(session_factory) as session:
        return [
            int(
                session.scalar(
                    text("SELECT count(*) FROM test_effect WHERE process_id = :p"), {"p": p}
                )
                or 0
            )
            for p in process_ids
        ]


def _processes(session_factory: Any, process_ids: list[uuid.UUID]) -> list[tuple[str, int]]:
    with unit_of_work(session_factory) as session:
        rows = {p.id: (str(p.status), p.attempt) for p in session.scalars(select(Process))}
    return [rows[p] for p in process_ids]


def test_a_failing_function_in_a_group_rolls_back_only_itself_and_alone_is_retried(
    session_factory: Any, project: str, effect_table: None
) -> None:
    messages = _messages(session_factory, project)
    processes = [process_id for _, _, process_id in messages]

    outcomes = run_group(session_factory, REGISTRY["t_grouped"], _group(messages), consumer="fn")

    expected = [StepOutcome.SUCCEEDED] * GROUP
    expected[FAILING] = StepOutcome.RETRYING
    assert outcomes == expected
    effects = [1] * GROUP
    effects[FAILING] = 0  # written, then rolled back with its savepoint
    assert _effects(session_factory, processes) == effects
    states = [("succeeded", 1)] * GROUP
    states[FAILING] = ("queued", 2)  # only it is retried
    assert _processes(session_factory, processes) == states
    with unit_of_work(session_factory) as session:
        retry = session.scalar(
            select(Outbox)
            .where(Outbox.type == "step", Outbox.aggregate_id == processes[FAILING])
            .order_by(Outbox.seq.desc())
        )
    assert retry is not None and retry.payload["attempt"] == 2

    # The same messages again (a redelivery of the whole group): nothing changes.
    again = run_group(session_factory, REGISTRY["t_grouped"], _group(messages), consumer="fn")

    assert again == [StepOutcome.SKIPPED] * GROUP
    assert _effects(session_factory, processes) == effects


def test_a_group_whose_transaction_breaks_commits_nothing(
    session_factory: Any, project: str, effect_table: None
) -> None:
    messages = _messages(session_factory, project)
    processes = [process_id for _, _, process_id in messages]
    # three messages ready at first (a round), the other two once those ran
    rounds: list[list[Any]] = [
        [(body, message_id) for body, message_id, _ in messages[:3]],
        [(body, message_id) for body, message_id, _ in messages[3:]],
    ]
    cut: list[bool] = []

    def source() -> tuple[Any, str | None] | None:
        if rounds and not rounds[0]:  # this round is over
            rounds.pop(0)
            return None
        if not rounds:
            return None
        if len(rounds) == 1 and not cut:
            # the database goes away in the middle of the group, between its rounds
            cut.append(True)
            with unit_of_work(session_factory) as session:
                session.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND state = 'idle in transaction'"
                    )
                )
        return rounds[0].pop(0)

    try:
        run_group(
            session_factory,
            REGISTRY["t_grouped"],
            StepGroup(source, size=100, seconds=60),
            consumer="fn",
        )
    except GroupBroken as exc:
        broken = str(exc)
    else:
        raise AssertionError("the group's transaction was cut, yet it did not break")

    assert cut and "connection is lost" in broken, broken  # the cut broke it, nothing else
    assert _effects(session_factory, processes) == [0] * GROUP
    assert _processes(session_factory, processes) == [("queued", 1)] * GROUP


@pytest.fixture
def quick(platform_env: dict[str, str]) -> Iterator[None]:
    """Every function counts as quick (group commit on), however loaded the machine."""
    os.environ["AUTOSTEP_GROUP_COMMIT_FAST_SECONDS"] = "1"
    get_settings.cache_clear()
    yield
    del os.environ["AUTOSTEP_GROUP_COMMIT_FAST_SECONDS"]
    get_settings.cache_clear()


def test_a_burst_of_quick_steps_shares_transactions_and_each_effect_commits_once(
    quick: None,
    functions: Any,
    relay: Any,
    session_factory: Any,
    project: str,
    wait_for_job: Callable[..., dict[str, Any]],
) -> None:
    consumer = next(
        entrypoint
        for container in functions.containers
        for entrypoint in container.entrypoints
        if isinstance(entrypoint, StepConsumer)
        and entrypoint.queue.name == step_queue_name("t_add")
    )
    definition = {"name": "burst", "steps": [{"name": "one", "function": "t_add"}]}
    with unit_of_work(session_factory) as session:
        publish_workflow(session, project, definition)
        warm_up = start_job(session, project, "burst", {"value": 0}).id
    assert wait_for_job(warm_up)["status"] == "succeeded"  # the function's pace is known

    with unit_of_work(session_factory) as session:
        jobs = [start_job(session, project, "burst", {"value": n}).id for n in range(60)]
    views = [wait_for_job(job_id) for job_id in jobs]

    assert {view["status"] for view in views} == {"succeeded"}
    assert consumer.largest_group > 1  # messages shared a transaction
    processes = [uuid.UUID(view["processes"][0]["id"]) for view in views]
    assert _effects(session_factory, processes) == [1] * len(jobs)


def _fan_out_messages(session_factory: Any, project: str) -> list[list[tuple[Any, str]]]:
    """Two runs, each fanning out over two items; the step messages of each run's children."""
    name = f"fan-{uuid.uuid4().hex[:6]}"
    definition = {
        "name": name,
        "steps": [{"name": "each", "function": "t_grouped", "for_each": "input.items"}],
    }
    runs_messages = []
    with unit_of_work(session_factory) as session:
        publish_workflow(session, project, definition)
        for _ in range(2):
            job_id = start_job(session, project, name, {"items": [{}, {}]}).id
            children = session.scalars(
                select(Process.id).where(Process.job_id == job_id, Process.parent_id.isnot(None))
            ).all()
            rows = session.scalars(
                select(Outbox).where(Outbox.type == "step", Outbox.aggregate_id.in_(children))
            ).all()
            assert len(rows) == 2
            runs_messages.append([(row.payload, str(row.id)) for row in rows])
    return runs_messages


def test_groups_lock_jobs_in_one_order_and_never_deadlock_each_other(
    session_factory: Any, project: str, effect_table: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    (j1, j2), (k1, k2) = _fan_out_messages(session_factory, project)
    # Each group completes its first step, then waits (2 s at most) for the other to
    # complete its own first step too: a group that locked its jobs in the order its
    # messages came would hold one run's job while the other held the other's.
    original = runs.complete_process
    arrived: list[Any] = []
    both = Event()

    def complete_then_meet(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        me = eventlet.getcurrent()
        if me not in arrived:
            arrived.append(me)
            if len(arrived) == 2:
                both.send()
            with eventlet.Timeout(2, False):
                both.wait()

    monkeypatch.setattr(runs, "complete_process", complete_then_meet)

    def run(messages: list[tuple[Any, str]]) -> Any:
        pending = list(messages)
        group = StepGroup(lambda: pending.pop(0) if pending else None, size=100, seconds=60)
        try:
            return run_group(session_factory, REGISTRY["t_grouped"], group, consumer="fn")
        except GroupBroken as exc:
            return exc

    first, second = eventlet.spawn(run, [j1, k1]), eventlet.spawn(run, [k2, j2])
    outcomes = [first.wait(), second.wait()]

    assert outcomes == [[StepOutcome.SUCCEEDED] * 2] * 2  # neither group broke


def test_two_groups_holding_one_message_at_once_call_its_function_once(
    session_factory: Any, project: str, database_url: str, effect_table: None
) -> None:
    name = f"gate-{uuid.uuid4().hex[:6]}"
    with unit_of_work(session_factory) as session:
        definition = {"name": name, "steps": [{"name": "one", "function": "t_gate"}]}
        publish_workflow(session, project, definition)
        job_id = start_job(session, project, name, {}).id
        process_id = session.scalar(select(Process.id).where(Process.job_id == job_id))
        row = session.scalar(
            select(Outbox).where(Outbox.type == "step", Outbox.aggregate_id == process_id)
        )
        assert row is not None and process_id is not None
    called.clear()
    gates.append(Event())

    def deliver() -> Any:
        pending = [(row.payload, str(row.id))]
        group = StepGroup(lambda: pending.pop(0) if pending else None, size=10, seconds=60)
        return run_group(session_factory, REGISTRY["t_gate"], group, consumer="fn")

    first = eventlet.spawn(deliver)
    until(lambda: len(called) == 1)  # the first group is inside the function
    second = eventlet.spawn(deliver)
    until(lambda: waiting_on_a_lock(database_url) == 1)  # ...the second waits on the inbox row
    gates[-1].send()

    assert sorted([first.wait(), second.wait()]) == [[StepOutcome.SKIPPED], [StepOutcome.SUCCEEDED]]
    assert called == [process_id]
    assert _effects(session_factory, [process_id]) == [1]
