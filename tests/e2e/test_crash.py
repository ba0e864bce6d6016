"""The crash test: SIGKILL the function runner and the relay at random moments.

A workflow of ``t_add`` steps with a fan-out (``s1`` -> ``each`` over three
items -> ``s3`` -> ``s4``) runs for a few hundred jobs, started in batches
before and during the chaos, while the runner and the relay are killed with
SIGKILL and restarted over and over. RabbitMQ redelivers what the runner had
not acknowledged, and the relay publishes again what it had claimed but not
deleted. Then everything runs undisturbed until every job has finished, and
the database must show that nothing was lost and nothing happened twice:

- every job succeeded with the output its input implies;
- every step has exactly one succeeded process (a fan-out exactly one child
  per item), and nothing else;
- every task process has exactly one row in ``test_effect`` (``t_add`` writes
  it in the step's own transaction), and the effects of a job happened in
  step order;
- the outbox is empty; the inbox holds exactly the step messages that were
  published (a tap queue bound next to the consumers' sees every
  publication, so it also counts what the relay published twice); the step
  queue and the dead-letter queue are empty, and the ``deadletters`` service
  (which fails the process of a message RabbitMQ gave up on) saw nothing.

The kill schedule comes from ``random.Random(seed)``; the seed is printed and
``AUTOSTEP_CRASH_SEED`` replays it (timings still vary with the machine).
"""

from __future__ import annotations

import math
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlparse

import amqp
import pytest
from sqlalchemy import text

from autostep.catalog import create_project, publish_workflow
from autostep.db import unit_of_work
from autostep.runs import start_job
from autostep.topology import (
    DEAD_QUEUE,
    EVENTS_EXCHANGE,
    STEPS_EXCHANGE,
    declare_base,
    step_queue_name,
)
from tests.e2e.conftest import ManagedProcess

pytestmark = [pytest.mark.e2e, pytest.mark.crash]

JOBS = 240
JOBS_BEFORE_CHAOS = 60
MIN_KILLS = 20
MIN_KILLS_EACH = 8
#: Seconds a process runs once ready, until new jobs arrive, until it is killed, dead.
RUN_FOR = (0.3, 1.5)
KILL_AFTER = (0.0, 0.15)
DEAD_FOR = (0.1, 1.0)
SETTLE_TIMEOUT = 240.0
OUTBOX_DRAIN_TIMEOUT = 30.0
ITEMS_PER_JOB = 3
TAP_QUEUE = f"e2e.crash.tap.{uuid.uuid4().hex[:8]}"

WORKFLOW: dict[str, Any] = {
    "name": "crash",
    "steps": [
        {"name": "s1", "function": "t_add", "next": [{"to": "each"}]},
        {
            "name": "each",
            "function": "t_add",
            "for_each": "input.items",
            "input": {"value": "item + prev.value"},
            "next": [{"to": "s3"}],
        },
        {
            "name": "s3",
            "function": "t_add",
            "input": {"value": "prev.items[0].value + prev.items[1].value + prev.items[2].value"},
            "next": [{"to": "s4"}],
        },
        {"name": "s4", "function": "t_add"},
    ],
}
#: (step, kind, item_index) of every process a job of WORKFLOW has.
EXPECTED_PROCESSES = sorted(
    [("s1", "task", -1), ("each", "fanout", -1), ("s3", "task", -1), ("s4", "task", -1)]
    + [("each", "task", index) for index in range(ITEMS_PER_JOB)]
)
TASKS_PER_JOB = sum(1 for _, kind, _ in EXPECTED_PROCESSES if kind == "task")


@pytest.fixture
def relay_settings() -> dict[str, str]:
    """A short lease: rows a killed relay had claimed are published again in seconds."""
    return {"AUTOSTEP_RELAY_LEASE_SECONDS": "5"}


@dataclass
class JobInput:
    value: int
    items: list[int]

    def data(self) -> dict[str, Any]:
        return {"value": self.value, "items": self.items}

    def expected(self) -> dict[str, int]:
        """What each step outputs (``t_add`` adds 1 to ``value``)."""
        s1 = self.value + 1
        children = [item + s1 + 1 for item in self.items]
        s3 = sum(children) + 1
        each = {f"each[{index}]": value for index, value in enumerate(children)}
        return {"s1": s1, **each, "s3": s3, "s4": s3 + 1}


@dataclass
class Chaos:
    """What the test did, for the summary."""

    kills: Counter[str] = field(default_factory=Counter)
    #: Task processes found running right after each runner kill (redelivered).
    interrupted_steps: int = 0
    #: Outbox rows found leased right after each relay kill (published again after the lease).
    stranded_rows: int = 0


class Tap:
    """A queue that receives a copy of every message the relay publishes.

    It is bound next to ``t_add``'s queue on the steps exchange and to every
    event on the events exchange, so it counts publications, duplicates
    included, without taking anything from the consumers.
    """

    def __init__(self, amqp_uri: str) -> None:
        parts = urlparse(amqp_uri)
        self.connection = amqp.Connection(
            host=f"{parts.hostname}:{parts.port or 5672}",
            userid=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            virtual_host=unquote(parts.path[1:]) or "/",
        )
        self.connection.connect()
        self.channel = self.connection.channel()
        declare_base(self.channel)
        self.channel.queue_declare(TAP_QUEUE, durable=False, auto_delete=False, exclusive=True)
        self.channel.queue_bind(TAP_QUEUE, STEPS_EXCHANGE, "t_add")
        self.channel.queue_bind(TAP_QUEUE, EVENTS_EXCHANGE, "#")

    def publications(self) -> list[tuple[str, str]]:
        """(message type, message id) of every publication so far."""
        seen = []
        while (message := self.channel.basic_get(TAP_QUEUE, no_ack=True)) is not None:
            seen.append((message.properties["type"], message.properties["message_id"]))
        return seen

    def messages_in(self, queue: str) -> int:
        """Ready messages in ``queue`` (a passive declare)."""
        return int(self.channel.queue_declare(queue, passive=True).message_count)

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def tap(amqp_uri: str) -> Iterator[Tap]:
    relay_tap = Tap(amqp_uri)
    yield relay_tap
    relay_tap.close()


def _scalar(session_factory: Any, sql: str, **params: Any) -> Any:
    with unit_of_work(session_factory) as session:
        return session.execute(text(sql), params).scalar()


def _rows(session_factory: Any, sql: str, **params: Any) -> list[Any]:
    with unit_of_work(session_factory) as session:
        return list(session.execute(text(sql), params).all())


def _start_jobs(
    session_factory: Any, project: str, rng: random.Random, count: int, jobs: dict[str, JobInput]
) -> None:
    for _ in range(count):
        job = JobInput(value=len(jobs), items=[rng.randrange(1000) for _ in range(ITEMS_PER_JOB)])
        with unit_of_work(session_factory) as session:
            jobs[str(start_job(session, project, "crash", job.data()).id)] = job


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _running(session_factory: Any, job_ids: list[str]) -> list[str]:
    rows = _rows(
        session_factory,
        "SELECT id FROM job WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'running'"
        " ORDER BY created_at",
        ids=job_ids,
    )
    return [str(row.id) for row in rows]


def _report(session_factory: Any, tap: Tap, seed: int, stuck: list[str]) -> str:
    """What the database and the broker show about jobs that did not finish."""
    lines = [f"seed {seed}: {len(stuck)} jobs did not finish"]
    for job_id in stuck[:5]:
        lines.append(f"job {job_id}: (step, kind, item_index, status, attempt, error)")
        lines += [
            f"    {tuple(row)}"
            for row in _rows(
                session_factory,
                "SELECT step, kind, item_index, status, attempt, error FROM process"
                " WHERE job_id = :j ORDER BY created_at, item_index",
                j=job_id,
            )
        ]
    outbox = _rows(
        session_factory,
        "SELECT type, routing_key, attempts, lease_until, available_at FROM outbox"
        " ORDER BY seq LIMIT 10",
    )
    lines.append(f"outbox: {_scalar(session_factory, 'SELECT count(*) FROM outbox')} rows,")
    lines += [f"    {tuple(row)}" for row in outbox]
    queue = step_queue_name("t_add")
    lines.append(f"ready in {queue}: {tap.messages_in(queue)}")
    lines.append(f"dead-lettered: {tap.messages_in(DEAD_QUEUE)}")
    return "\n".join(lines)


def _run_chaos(
    rng: random.Random,
    victims: list[ManagedProcess],
    session_factory: Any,
    project: str,
    jobs: dict[str, JobInput],
) -> Chaos:
    """Kill a random victim now and then while the rest of the jobs are started.

    Each round the victim runs RUN_FOR seconds; then half a batch of jobs is
    started and the victim is killed a moment later, while it works on them;
    the other half is started while it is dead, and it is restarted after
    DEAD_FOR seconds.
    """
    chaos = Chaos()
    per_round = math.ceil((JOBS - len(jobs)) / MIN_KILLS)
    while (
        len(jobs) < JOBS
        or sum(chaos.kills.values()) < MIN_KILLS
        or min(chaos.kills[victim.name] for victim in victims) < MIN_KILLS_EACH
    ):
        batch = min(per_round, JOBS - len(jobs))
        time.sleep(rng.uniform(*RUN_FOR))
        victim = rng.choice(victims)
        _start_jobs(session_factory, project, rng, batch // 2, jobs)
        time.sleep(rng.uniform(*KILL_AFTER))
        victim.kill()
        chaos.kills[victim.name] += 1
        if victim.name == "runner":
            chaos.interrupted_steps += _scalar(
                session_factory,
                "SELECT count(*) FROM process WHERE status = 'running' AND kind = 'task'",
            )
        else:
            chaos.stranded_rows += _scalar(
                session_factory, "SELECT count(*) FROM outbox WHERE lease_token IS NOT NULL"
            )
        _start_jobs(session_factory, project, rng, batch - batch // 2, jobs)
        time.sleep(rng.uniform(*DEAD_FOR))
        victim.start()
    return chaos


@pytest.mark.timeout(420)
def test_killing_runner_and_relay_loses_and_doubles_nothing(
    session_factory: Any,
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
    tap: Tap,
) -> None:
    seed = int(os.environ.get("AUTOSTEP_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\ncrash test seed {seed} (AUTOSTEP_CRASH_SEED={seed} replays the kill schedule)")
    rng = random.Random(seed)
    began = time.monotonic()
    test_started: datetime = _scalar(session_factory, "SELECT now()")
    project = f"crash-{uuid.uuid4().hex[:8]}"
    with unit_of_work(session_factory) as session:
        create_project(session, project)
        publish_workflow(session, project, WORKFLOW)

    jobs: dict[str, JobInput] = {}
    _start_jobs(session_factory, project, rng, JOBS_BEFORE_CHAOS, jobs)
    chaos = _run_chaos(rng, [runner_process, relay_process], session_factory, project, jobs)
    chaos_ended = time.monotonic()
    assert relay_process.is_running() and runner_process.is_running()

    job_ids = list(jobs)
    finished = _wait_until(lambda: not _running(session_factory, job_ids), SETTLE_TIMEOUT)
    settled = time.monotonic()
    assert finished, _report(session_factory, tap, seed, _running(session_factory, job_ids))
    drained = _wait_until(
        lambda: _scalar(session_factory, "SELECT count(*) FROM outbox") == 0, OUTBOX_DRAIN_TIMEOUT
    )
    assert drained, f"outbox not drained: {_report(session_factory, tap, seed, [])}"

    _check_jobs(session_factory, seed, jobs)
    _check_processes(session_factory, seed, jobs)
    _check_effects(session_factory, seed, job_ids)
    inbox, publications = _check_messages(session_factory, tap, seed, test_started)

    again: Counter[str] = Counter()  # publications beyond the first, by message type
    for (kind, _), copies in Counter(publications).items():
        again[kind] += copies - 1
    print(
        f"crash test seed {seed}: {JOBS} jobs, {TASKS_PER_JOB * JOBS} steps,"
        f" kills {dict(chaos.kills)} ({sum(chaos.kills.values())} in total);"
        f" {chaos.interrupted_steps} steps running at runner kills,"
        f" {chaos.stranded_rows} outbox rows leased at relay kills;"
        f" {len(publications)} publications of {len(set(publications))} outbox rows,"
        f" published again: {again['step']} step messages,"
        f" {sum(again.values()) - again['step']} events; {inbox} inbox rows;"
        f" chaos {chaos_ended - began:.1f}s, settled after {settled - chaos_ended:.1f}s,"
        f" total {time.monotonic() - began:.1f}s"
    )


def _check_jobs(session_factory: Any, seed: int, jobs: dict[str, JobInput]) -> None:
    """Every job succeeded with the output its input implies."""
    rows = _rows(
        session_factory,
        "SELECT id, status, output, error FROM job WHERE id = ANY(CAST(:ids AS uuid[]))",
        ids=list(jobs),
    )
    ends = {str(row.id): (row.status, row.output, row.error) for row in rows}
    wrong = {
        job_id: ends[job_id]
        for job_id, job in jobs.items()
        if ends[job_id] != ("succeeded", {"value": job.expected()["s4"]}, None)
    }
    assert not wrong, f"seed {seed}: jobs with a wrong end: {list(wrong.items())[:5]}"


def _check_processes(session_factory: Any, seed: int, jobs: dict[str, JobInput]) -> None:
    """Every step ran in exactly one process (a fan-out: one child per item), which succeeded."""
    processes: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    outputs: dict[str, dict[str, int]] = defaultdict(dict)
    rows = _rows(
        session_factory,
        "SELECT job_id, step, kind, item_index, status, output FROM process"
        " WHERE job_id = ANY(CAST(:ids AS uuid[]))",
        ids=list(jobs),
    )
    for row in rows:
        job_id = str(row.job_id)
        assert row.status == "succeeded", f"seed {seed}: job {job_id}: {tuple(row)}"
        processes[job_id].append(
            (row.step, row.kind, -1 if row.item_index is None else row.item_index)
        )
        if row.kind == "task":
            name = row.step if row.item_index is None else f"{row.step}[{row.item_index}]"
            outputs[job_id][name] = row.output["value"]
    wrong = {j: sorted(p) for j, p in processes.items() if sorted(p) != EXPECTED_PROCESSES}
    assert not wrong, f"seed {seed}: jobs with missing or extra processes: {wrong}"
    assert {j: outputs[j] for j in jobs} == {j: job.expected() for j, job in jobs.items()}


def _check_effects(session_factory: Any, seed: int, job_ids: list[str]) -> None:
    """Every task process had its effect exactly once, and a job's effects in step order."""
    effects = _rows(
        session_factory,
        """
        SELECT p.job_id, p.id, p.step, count(e.process_id) AS effects,
               array_agg(e.value) AS effect_values, (p.output->>'value')::bigint AS value,
               min(e.created_at) AS effect_at
        FROM process p LEFT JOIN test_effect e ON e.process_id = p.id
        WHERE p.job_id = ANY(CAST(:ids AS uuid[])) AND p.kind = 'task'
        GROUP BY p.id
        """,
        ids=job_ids,
    )
    assert len(effects) == TASKS_PER_JOB * len(job_ids)
    not_once = [
        tuple(row) for row in effects if row.effects != 1 or row.effect_values != [row.value]
    ]
    assert not not_once, f"seed {seed}: effects lost or doubled: {not_once[:10]}"
    at: dict[str, dict[str, list[datetime]]] = defaultdict(lambda: defaultdict(list))
    for row in effects:
        at[str(row.job_id)][row.step].append(row.effect_at)
    out_of_order = [
        job_id
        for job_id, steps in at.items()
        if not max(steps["s1"]) < min(steps["each"])
        or not max(steps["each"]) < min(steps["s3"])
        or not max(steps["s3"]) < min(steps["s4"])
    ]
    assert not out_of_order, f"seed {seed}: steps ran out of order in jobs {out_of_order[:5]}"


def _check_messages(
    session_factory: Any, tap: Tap, seed: int, since: datetime
) -> tuple[int, list[tuple[str, str]]]:
    """The inbox applied every published step message; none died; no queue holds any.

    Returns the number of inbox rows and the publications the tap saw.
    """
    inbox = {
        str(row.message_id)
        for row in _rows(
            session_factory,
            "SELECT message_id FROM inbox WHERE consumer = 'fn_t_add' AND received_at >= :t",
            t=since,
        )
    }
    assert len(inbox) >= TASKS_PER_JOB * JOBS, "an inbox row per step execution"
    publications = tap.publications()
    published = {message_id for kind, message_id in publications if kind == "step"}
    assert published == inbox, f"seed {seed}: published step messages are not those applied"
    died = _scalar(
        session_factory,
        "SELECT count(*) FROM inbox WHERE consumer = 'deadletters' AND received_at >= :t",
        t=since,
    )
    assert died == 0, f"seed {seed}: {died} step messages were dead-lettered"
    assert tap.messages_in(DEAD_QUEUE) == 0, f"seed {seed}: messages wait in {DEAD_QUEUE}"
    assert tap.messages_in(step_queue_name("t_add")) == 0
    return len(inbox), publications
