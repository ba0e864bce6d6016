"""Group commit: several steps in one transaction, a failing one costing only itself.

The first tests hand :func:`autostep.functions.group.run_group` a group of
step messages read from the outbox, as the entrypoint would: each function
writes its effect, one of them then raises. Its write must vanish with its
savepoint while the others' commit once; only it is retried. A burst
through the nameko service checks that messages really shared
transactions, every effect once, and that a group's acks left together.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import eventlet
import psycopg
import pytest
from eventlet.event import Event
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, text

from autostep import StepContext, function
from autostep.catalog import publish_workflow
from autostep.db import unit_of_work
from autostep.functions.entrypoint import StepConsumer
from autostep.functions.group import GroupBroken, StepGroup, run_group
from autostep.functions.runner import StepOutcome
from autostep.models import Job, Outbox, Process
from autostep.runs import start_job
from autostep.sdk import REGISTRY
from autostep.settings import get_settings, libpq_dsn
from autostep.topology import step_queue_name
from tests.helpers import socket_writes, until, waiting_on_a_lock, without_ids_and_times
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
    return _group_of([(body, message_id) for body, message_id, _ in messages])


def _group_of(messages: list[tuple[Any, str]]) -> StepGroup:
    """A group of ``messages`` (body, message id), all ready at once."""
    pending = list(messages)
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
    transports: list[Any] = []  # the consumer's connection, as its first ack meets it
    ack = consumer.consumer.ack_message

    def noting_its_connection(message: Any) -> None:
        transports.append(message.channel.connection.transport)
        ack(message)

    consumer.consumer.ack_message = noting_its_connection
    with unit_of_work(session_factory) as session:
        publish_workflow(session, project, definition)
        warm_up = start_job(session, project, "burst", {"value": 0}).id
    assert wait_for_job(warm_up)["status"] == "succeeded"  # the function's pace is known
    del consumer.consumer.ack_message

    with socket_writes(transports[0]) as writes:  # a group's acks leave together
        with unit_of_work(session_factory) as session:
            jobs = [start_job(session, project, "burst", {"value": n}).id for n in range(60)]
        views = [wait_for_job(job_id) for job_id in jobs]

    assert {view["status"] for view in views} == {"succeeded"}
    assert consumer.largest_group > 1  # messages shared a transaction
    processes = [uuid.UUID(view["processes"][0]["id"]) for view in views]
    assert _effects(session_factory, processes) == [1] * len(jobs)
    # one write per group and per message that ran alone, a heartbeat or two besides
    alone = len(jobs) - consumer.grouped
    assert len(writes) <= consumer.groups + alone + 2, (
        f"{len(writes)} writes for {consumer.groups} groups and {alone} messages alone"
    )


def _run_in_groups(session_factory: Any, project: str, *, one_by_one: bool) -> dict[str, Any]:
    """Three runs of a two-step chain and a fan-out over three items, then one more step.

    Every step message ready is run, in rounds, until none is: all of a
    round's in one group, or each alone. What the database then holds, ids
    and times left out.
    """
    chain, fan = f"chain-{uuid.uuid4().hex[:6]}", f"fan-{uuid.uuid4().hex[:6]}"
    with unit_of_work(session_factory) as session:
        publish_workflow(
            session,
            project,
            {
                "name": chain,
                "steps": [
                    {"name": "a", "function": "t_grouped", "next": [{"to": "b"}]},
                    {"name": "b", "function": "t_grouped"},
                ],
            },
        )
        publish_workflow(
            session,
            project,
            {
                "name": fan,
                "steps": [
                    {
                        "name": "each",
                        "function": "t_grouped",
                        "for_each": "input.items",
                        "next": [{"to": "after"}],
                    },
                    {"name": "after", "function": "t_grouped"},
                ],
            },
        )
        jobs = [start_job(session, project, chain, {"n": n}).id for n in range(3)]
        jobs.append(start_job(session, project, fan, {"items": [{"k": 1}, {"k": 2}, {"k": 3}]}).id)
    while ready := _ready(session_factory, jobs):
        ready.reverse()  # not in the order they were written
        for messages in [[m] for m in ready] if one_by_one else [ready]:
            group = _group_of(messages)
            outcomes = run_group(session_factory, REGISTRY["t_grouped"], group, consumer="fn")
            assert outcomes == [StepOutcome.SUCCEEDED] * len(messages)
    with unit_of_work(session_factory) as session:
        processes = session.scalars(select(Process).where(Process.job_id.in_(jobs))).all()
        return {
            "jobs": [
                (job.status, job.steps, job.version, job.output)
                for job in (session.get(Job, job_id) for job_id in jobs)
                if job is not None
            ],
            "processes": sorted(
                [
                    (
                        jobs.index(p.job_id),
                        p.step,
                        -1 if p.item_index is None else p.item_index,
                        p.status,
                        p.attempt,
                        p.output,
                        p.version,
                        p.pending,
                    )
                    for p in processes
                ],
                key=lambda row: row[:3],
            ),
            # each job's events, in the order the relay publishes them
            "events": [
                without_ids_and_times(
                    session.execute(
                        text(
                            "SELECT e.value FROM outbox AS o,"
                            " jsonb_array_elements(o.payload) WITH ORDINALITY AS e(value, n)"
                            " WHERE o.type = 'events' AND o.aggregate_id = :job"
                            " ORDER BY o.seq, e.n"
                        ),
                        {"job": job_id},
                    )
                    .scalars()
                    .all()
                )
                for job_id in jobs
            ],
            "effects": _effects(session_factory, [p.id for p in processes if p.kind == "task"]),
        }


def _ready(session_factory: Any, jobs: list[uuid.UUID]) -> list[tuple[Any, str]]:
    """The step messages of the jobs' processes that are queued, in the order written."""
    with unit_of_work(session_factory) as session:
        queued = select(Process.id).where(Process.job_id.in_(jobs), Process.status == "queued")
        rows = session.scalars(
            select(Outbox)
            .where(Outbox.type == "step", Outbox.aggregate_id.in_(queued))
            .order_by(Outbox.seq)
        ).all()
        return [(row.payload, str(row.id)) for row in rows]


def test_a_group_completes_its_steps_together_as_each_alone_would(
    session_factory: Any, project: str, effect_table: None
) -> None:
    # the chains' first steps and the fan-out's children in one transaction: one statement
    # locks, one writes; the last child of the three joins the fan-out
    together = _run_in_groups(session_factory, project, one_by_one=False)
    alone = _run_in_groups(session_factory, project, one_by_one=True)

    assert together == alone
    assert [status for status, *_ in together["jobs"]] == ["succeeded"] * 4
    assert together["effects"] == [1] * 10  # 3 chains of 2 steps, 3 children, 1 step after


def test_a_group_locks_its_jobs_in_id_order_whatever_order_its_messages_came_in(
    session_factory: Any, project: str, database_url: str, effect_table: None
) -> None:
    # Groups cannot deadlock each other when each locks its jobs in one order. Here the
    # messages come higher job first, and the higher job is held from outside: the group
    # must hold the lower job's lock while it waits for the higher one's.
    name = f"order-{uuid.uuid4().hex[:6]}"
    found: dict[uuid.UUID, tuple[Any, str]] = {}
    with unit_of_work(session_factory) as session:
        publish_workflow(
            session, project, {"name": name, "steps": [{"name": "one", "function": "t_grouped"}]}
        )
        for _ in range(2):
            job_id = start_job(session, project, name, {}).id
            process_id = session.scalar(select(Process.id).where(Process.job_id == job_id))
            row = session.scalar(
                select(Outbox).where(Outbox.type == "step", Outbox.aggregate_id == process_id)
            )
            assert row is not None
            found[job_id] = (row.payload, str(row.id))
    lower, higher = sorted(found)
    dsn = libpq_dsn(database_url)
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT 1 FROM job WHERE id = %s FOR UPDATE", (higher,))
        pending = [found[higher], found[lower]]
        group = StepGroup(lambda: pending.pop(0) if pending else None, size=10, seconds=60)
        running = eventlet.spawn(
            run_group, session_factory, REGISTRY["t_grouped"], group, consumer="fn"
        )
        until(lambda: waiting_on_a_lock(database_url) == 1)  # the group waits for `higher`
        with psycopg.connect(dsn) as probe, pytest.raises(psycopg.errors.LockNotAvailable):
            probe.execute("SELECT 1 FROM job WHERE id = %s FOR UPDATE NOWAIT", (lower,))
        holder.rollback()

    assert running.wait() == [StepOutcome.SUCCEEDED] * 2


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
