"""Kills of the processes, and outages of the servers, lose no step and double no effect.

Two tests. The first kills autostep's processes, as described here; the
second (:func:`test_a_database_outage_and_broker_crashes_lose_and_double_no_step`)
takes the servers away instead, on a PostgreSQL server and a RabbitMQ node
of its own (:mod:`tests.e2e.servers`), and no process is restarted.

A workflow of ``t_add`` steps with a fan-out (``s1`` -> ``each`` over three
items -> ``s3`` -> ``s4``) runs for a few hundred jobs, started in batches
before and during the chaos. One function runner and two relays
(``relay-a`` and ``relay-b``, which share the 64 outbox shards) are killed
with SIGKILL and restarted, round after round: a victim is picked at random,
half a batch of jobs is started, a moment later the victim is frozen
(SIGSTOP), looked at from PostgreSQL and killed; the other half is started
while it is dead, then it is restarted. Freezing before the kill lets the
test see, without a race, what the kill cut short: a frozen process does
nothing more, as a killed one, but its connections stay open until the kill
a few milliseconds later. Half of the relay kills are aimed: the
frozen relay is let go on (SIGCONT) for a few milliseconds and frozen again
until it is caught between publishing rows and deleting them (at most
``AIM_FOR`` seconds), a window of milliseconds that a random moment rarely
hits. Then everything runs undisturbed until every job has finished.

**The kills hit.** Each figure below is measured where the failure happens,
and each must be at least one, so the test fails if the chaos disturbed
nothing:

- *Steps cut* by runner kills: open transactions of the frozen runner (its
  PostgreSQL sessions carry its incarnation as ``application_name``) that
  had written an inbox row and ``t_add``'s ``test_effect`` row: the function
  had run, its effect was written, nothing was committed. The kill rolls
  them back and leaves their messages unacknowledged, so these steps can
  only have succeeded through a redelivery that ran the function again.
  (Transactions that had only claimed their message are printed as "claims
  cut".) Processes in status ``running`` would not show this: a fast step
  goes from ``queued`` to ``succeeded`` in one transaction.
- *Rows stranded* by relay kills: outbox rows in the frozen relay's shards
  that were leased and that the tap queue had already received, i.e.
  published and not deleted. Only their lease holder may delete them, so
  each must be published again once its lease ends (or when the shard's new
  owner releases it): the test asserts that the tap saw every one of them
  twice or more. Most are rows of events: the relay publishes step messages
  only for runs started from outside a runner, and for those a runner left
  behind. Step messages are published twice by runner kills too: a runner
  killed after its dispatcher published a step message and before it
  deleted the row leaves the row to the relay after the grace. The test
  asserts that at least one step message was published twice, and that the
  step of each such message had exactly one effect.
- *Takeovers*: a thread samples every 0.1 s which relay incarnation holds
  each shard's advisory lock (``SHARD_LOCK`` in ``pg_locks``). At least one
  shard must have passed to the other relay after its holder was killed.

A runner killed after a commit and before its ack also makes RabbitMQ
deliver an applied message again, which the inbox absorbs; ``t_add`` leaves
no trace of such a delivery, so it is not counted.

Rounds go on until there were at least 8 runner kills, 8 relay kills, 20 in
all, and every figure above was seen, at most ``MAX_ROUNDS`` rounds.

**Nothing was lost or doubled.** The database must then show:

- every job succeeded with the output its input implies;
- every step has exactly one succeeded process (a fan-out exactly one child
  per item), and nothing else;
- every task process has exactly one row in ``test_effect`` (``t_add`` writes
  it in the step's own transaction), and the effects of a job happened in
  step order;
- the outbox is empty; the inbox holds one applied message per step, and
  every step message that was published among them (a tap queue bound next
  to the consumers' sees every publication, duplicates included; the
  others are steps a runner ran straight from their outbox rows); the step
  queue and the dead-letter queue are empty, and the ``deadletters``
  service (which fails the process of a message RabbitMQ gave up on) saw
  nothing.

The random choices come from ``random.Random(seed)``; the seed is printed and
``AUTOSTEP_CRASH_SEED`` replays them (timings still vary with the machine,
and with them the effects of each kill and the number of rounds).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from autostep.catalog import create_project, publish_workflow
from autostep.db import make_engine, make_session_factory, unit_of_work
from autostep.migrate import upgrade
from autostep.relay import SHARD_LOCK
from autostep.runs import start_job
from autostep.settings import libpq_dsn
from autostep.topology import (
    DEAD_QUEUE,
    EVENTS_EXCHANGE,
    STEPS_EXCHANGE,
    step_queue_name,
)
from tests.e2e.conftest import (
    RUNNER_MODULES,
    ManagedProcess,
    relay_holds_membership,
    runner_connected,
)
from tests.e2e.servers import PrivatePostgres, PrivateRabbit
from tests.helpers import Tap
from tests.stepfuncs import EFFECT_TABLE

pytestmark = [pytest.mark.e2e, pytest.mark.crash]

#: Jobs started in all (at least: rounds beyond the minimums start more), and before the chaos.
JOBS = 240
JOBS_BEFORE_CHAOS = 60
MIN_KILLS = 20
MIN_RUNNER_KILLS = 8
MIN_RELAY_KILLS = 8
#: Rounds the chaos may take to reach its minimums and see every effect it must have.
MAX_ROUNDS = 30
#: Seconds a process runs once ready, until new jobs arrive, until it is frozen, dead.
RUN_FOR = (0.3, 1.5)
KILL_AFTER = (0.0, 0.15)
DEAD_FOR = (0.1, 1.0)
#: Share of relay kills aimed between a publication and its deletion, and how long
#: such a kill may look for that moment.
AIMED_SHARE = 0.5
AIM_FOR = 0.5
#: Seconds a frozen process's database sessions get to finish the statement they run,
#: and seconds they must then stay quiet (a statement it sent may still be on its way).
SETTLE_SESSIONS_TIMEOUT = 2.0
QUIET_SECONDS = 0.05
SHARD_SAMPLE_SECONDS = 0.1
SETTLE_TIMEOUT = 240.0
OUTBOX_DRAIN_TIMEOUT = 30.0
ITEMS_PER_JOB = 3
RELAYS = ("relay-a", "relay-b")
#: A short lease (rows a killed relay claimed are published again in seconds) and
#: quick rebalancing (shards move to the surviving relay within half a second).
RELAY_ENV = {"AUTOSTEP_RELAY_LEASE_SECONDS": "5", "AUTOSTEP_RELAY_REBALANCE_SECONDS": "0.5"}

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

#: The current database's oid, for pg_locks rows.
THIS_DATABASE = "(SELECT oid FROM pg_database WHERE datname = current_database())"
#: Sessions of a process incarnation still executing a statement (not waiting for a lock).
BUSY_SESSIONS = """
    SELECT count(*) FROM pg_stat_activity
    WHERE application_name = %s AND datname = current_database()
      AND state = 'active' AND wait_event_type IS DISTINCT FROM 'Lock'
"""
#: Open transactions of a (frozen) incarnation that wrote an inbox row, and whether
#: each also wrote a ``test_effect`` row (the step's function had run). A session
#: waiting for the client, or for a lock that another of them holds, cannot commit.
OPEN_STEPS = f"""
    SELECT count(*), count(*) FILTER (WHERE ran) FROM (
        SELECT a.pid, bool_or(c.relname = 'test_effect') AS ran
        FROM pg_stat_activity a
        JOIN pg_locks l ON l.pid = a.pid
        JOIN pg_class c ON c.oid = l.relation
        WHERE a.application_name = %s AND a.datname = current_database()
          AND (a.state = 'idle in transaction'
               OR (a.state = 'active' AND a.wait_event_type = 'Lock'))
          AND l.locktype = 'relation' AND l.mode = 'RowExclusiveLock' AND l.granted
          AND l.database = {THIS_DATABASE}
        GROUP BY a.pid
        HAVING bool_or(c.relname = 'inbox')
    ) AS open_steps
"""
#: Shard advisory locks held, with the ``application_name`` (incarnation) holding each.
SHARD_HOLDERS = f"""
    SELECT l.objid::int, a.application_name FROM pg_locks l JOIN pg_stat_activity a
      ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = {SHARD_LOCK}
      AND l.objsubid = 2 AND l.database = {THIS_DATABASE}
"""
#: The shards a relay incarnation holds.
SHARDS_OF = f"""
    SELECT objid FROM ({SHARD_HOLDERS}) AS held (objid, application_name)
    WHERE application_name = %(relay)s
"""
#: Outbox rows leased in the shards a relay incarnation holds.
LEASED_IN_SHARDS_OF = f"""
    SELECT id::text, type FROM outbox
    WHERE lease_token IS NOT NULL AND shard IN ({SHARDS_OF})
"""


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


@dataclass(frozen=True)
class Publication:
    """One message the tap received."""

    type: str
    message_id: str
    #: The process a step message runs (None for an event).
    process_id: str | None


@dataclass(frozen=True)
class Handover:
    """A shard seen held by ``before``, then by ``after`` (relay incarnations)."""

    at: float
    shard: int
    before: str
    after: str


@dataclass
class Chaos:
    """What the chaos did, and what the kills cut short."""

    rounds: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    #: Monotonic time each killed incarnation was frozen.
    killed_at: dict[str, float] = field(default_factory=dict)
    #: Runner transactions that had claimed a step message (inbox row), cut by kills.
    claims_cut: int = 0
    #: Of those, the ones in which ``t_add`` had run (its effect written, not committed).
    steps_cut: int = 0
    #: Outbox rows a killed relay had published but not deleted, by id: their type.
    stranded: dict[str, str] = field(default_factory=dict)
    #: Seconds spent waiting for restarted victims to be ready.
    restarting: float = 0.0
    #: One line per kill: the incarnation killed and what the kill cut short.
    log: list[str] = field(default_factory=list)

    @property
    def relay_kills(self) -> int:
        return sum(self.kills[name] for name in RELAYS)

    def stranded_steps(self) -> int:
        return sum(1 for kind in self.stranded.values() if kind == "step")


class PublicationTap(Tap):
    """The tap next to ``t_add``'s queue and every event: each publication, duplicates included.

    :meth:`drain` collects what arrived into :attr:`seen`.
    """

    def __init__(self, amqp_uri: str) -> None:
        super().__init__(amqp_uri, [(STEPS_EXCHANGE, "t_add"), (EVENTS_EXCHANGE, "#")])
        self.seen: list[Publication] = []

    def drain(self) -> list[Publication]:
        """Every publication received so far."""
        for message in self.messages():
            kind = message.properties["type"]
            process = json.loads(message.body)["process_id"] if kind == "step" else None
            self.seen.append(Publication(kind, message.properties["message_id"], process))
        return self.seen


class ShardWatch:
    """Samples, from a thread, which relay incarnation holds each outbox shard.

    Every change of holder between two samples is a :class:`Handover`.
    """

    def __init__(self, database_url: str) -> None:
        self.dsn = libpq_dsn(database_url)
        self.handovers: list[Handover] = []
        self.samples = 0
        self._holders: dict[int, str] = {}
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shard-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; raise what made the sampling fail, if anything did."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self._error is not None:
            raise RuntimeError("sampling the shard holders failed") from self._error

    def takeovers(self, killed_at: dict[str, float]) -> list[Handover]:
        """Shards taken by one relay after the other relay's incarnation holding them was killed."""
        return [
            handover
            for handover in list(self.handovers)
            if _relay(handover.before) != _relay(handover.after)
            and killed_at.get(handover.before, math.inf) <= handover.at
        ]

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._stop.wait(SHARD_SAMPLE_SECONDS):
                    self._sample(conn)
        except BaseException as exc:
            self._error = exc

    def _sample(self, conn: psycopg.Connection[Any]) -> None:
        at = time.monotonic()
        for shard, holder in conn.execute(SHARD_HOLDERS).fetchall():
            before = self._holders.get(shard)
            if before is not None and before != holder:
                self.handovers.append(Handover(at, shard, before, holder))
            self._holders[shard] = holder
        self.samples += 1


def _relay(incarnation: str) -> str:
    """The process name of an incarnation (``relay-a#3`` -> ``relay-a``)."""
    return incarnation.split("#", 1)[0]


@pytest.fixture
def tap(amqp_uri: str) -> Iterator[PublicationTap]:
    relay_tap = PublicationTap(amqp_uri)
    yield relay_tap
    relay_tap.close()


@pytest.fixture
def relays(
    autostep_process: Callable[..., ManagedProcess], database_url: str
) -> list[ManagedProcess]:
    """Two ``autostep relay`` processes sharing the shards, each ready once it is a member."""
    ready = relay_holds_membership(database_url)
    return [autostep_process(name, "relay", env=RELAY_ENV, ready=ready) for name in RELAYS]


@pytest.fixture
def observer(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to look at sessions and locks of the processes with."""
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as conn:
        yield conn


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


def _report(session_factory: Any, tap: PublicationTap, seed: int, stuck: list[str]) -> str:
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


# -- the chaos -------------------------------------------------------------------


def _freeze(process: ManagedProcess, observer: psycopg.Connection[Any]) -> bool:
    """SIGSTOP ``process`` and wait until its database sessions are settled; whether they are."""
    assert process.pid is not None and process.is_running(), f"{process!r} is not running"
    os.kill(process.pid, signal.SIGSTOP)
    return _settled(process, observer)


def _settled(process: ManagedProcess, observer: psycopg.Connection[Any]) -> bool:
    """Wait until no session of the frozen ``process`` runs a statement; whether none does.

    A statement the server was running (a COMMIT, say) completes; after that
    the frozen process's sessions wait for it, or for locks its other
    sessions hold, and change nothing more.
    """
    deadline = time.monotonic() + SETTLE_SESSIONS_TIMEOUT
    while observer.execute(BUSY_SESSIONS, (process.incarnation,)).fetchone() != (0,):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _kill_runner(runner: ManagedProcess, observer: psycopg.Connection[Any], chaos: Chaos) -> None:
    """Freeze the runner, count the step transactions it has open, and kill it.

    A session still running a statement after SETTLE_SESSIONS_TIMEOUT is not
    counted (``OPEN_STEPS`` leaves it out).
    """
    chaos.killed_at[runner.incarnation] = time.monotonic()
    try:
        _freeze(runner, observer)
        time.sleep(QUIET_SECONDS)
        _settled(runner, observer)
        row = observer.execute(OPEN_STEPS, (runner.incarnation,)).fetchone()
    finally:
        runner.kill()
    claimed, ran = row if row is not None else (0, 0)
    chaos.claims_cut += claimed
    chaos.steps_cut += ran
    chaos.log.append(f"{runner.incarnation}: {claimed} claims cut, {ran} after t_add ran")


def _stranded(
    relay: ManagedProcess, observer: psycopg.Connection[Any], tap: PublicationTap
) -> dict[str, str]:
    """Rows the frozen ``relay`` has leased and the tap has received, by id: their type."""
    leased = observer.execute(LEASED_IN_SHARDS_OF, {"relay": relay.incarnation}).fetchall()
    published = {publication.message_id for publication in tap.drain()}
    return {row: kind for row, kind in leased if row in published}


def _kill_relay(
    relay: ManagedProcess,
    observer: psycopg.Connection[Any],
    tap: PublicationTap,
    chaos: Chaos,
    aimed: bool,
) -> None:
    """Freeze a relay, note which rows it published but did not delete, and kill it.

    An ``aimed`` kill looks at the frozen relay and, as long as it has no such
    rows, lets it go on (SIGCONT) for a few milliseconds and freezes it again,
    for at most AIM_FOR seconds. Rows are only counted once the relay's
    session stayed quiet for QUIET_SECONDS, so that a DELETE it sent just
    before it froze cannot remove them behind the test's back.
    """
    deadline = time.monotonic() + (AIM_FOR if aimed else 0.0)
    looks = 0
    try:
        while True:
            looks += 1
            stranded = _stranded(relay, observer, tap) if _freeze(relay, observer) else {}
            if stranded:
                time.sleep(QUIET_SECONDS)
                stranded = _stranded(relay, observer, tap) if _settled(relay, observer) else {}
            if stranded or time.monotonic() >= deadline:
                break
            assert relay.pid is not None
            os.kill(relay.pid, signal.SIGCONT)
            time.sleep(0.003)
        shards = len(observer.execute(SHARDS_OF, {"relay": relay.incarnation}).fetchall())
        chaos.killed_at[relay.incarnation] = time.monotonic()
    finally:
        relay.kill()
    chaos.stranded.update(stranded)
    steps = sum(1 for kind in stranded.values() if kind == "step")
    aim = f" (aimed, {looks} looks)" if aimed else ""
    chaos.log.append(
        f"{relay.incarnation}{aim}: holding {shards} shards,"
        f" {len(stranded)} rows published and not deleted ({steps} step messages)"
    )


def _chaos_done(chaos: Chaos, jobs: dict[str, JobInput], watch: ShardWatch) -> bool:
    return (
        len(jobs) >= JOBS
        and sum(chaos.kills.values()) >= MIN_KILLS
        and not _runner_wanted(chaos)
        and not _relay_wanted(chaos, watch)
    )


def _runner_wanted(chaos: Chaos) -> bool:
    return chaos.kills["runner"] < MIN_RUNNER_KILLS or chaos.steps_cut == 0


def _relay_wanted(chaos: Chaos, watch: ShardWatch) -> bool:
    return (
        chaos.relay_kills < MIN_RELAY_KILLS
        or not chaos.stranded
        or not watch.takeovers(chaos.killed_at)
    )


def _run_chaos(
    rng: random.Random,
    runner: ManagedProcess,
    relays: list[ManagedProcess],
    observer: psycopg.Connection[Any],
    tap: PublicationTap,
    watch: ShardWatch,
    session_factory: Any,
    project: str,
    jobs: dict[str, JobInput],
) -> Chaos:
    """Kill a random victim now and then while more jobs are started.

    Each round the victim runs RUN_FOR seconds; then half a batch of jobs is
    started and the victim is frozen and killed a moment later, while it works
    on them; the other half is started while it is dead, and it is restarted
    after DEAD_FOR seconds. The victim is the runner or one of the relays, at
    even odds; once only one of them still lacks kills or an effect, rounds
    kill that one. A share (AIMED_SHARE) of the relay kills is aimed (see
    :func:`_kill_relay`), as a random moment rarely falls into the few
    milliseconds between a publication and its deletion.
    """
    chaos = Chaos()
    per_round = math.ceil((JOBS - len(jobs)) / MIN_KILLS)
    while not _chaos_done(chaos, jobs, watch) and chaos.rounds < MAX_ROUNDS:
        chaos.rounds += 1
        time.sleep(rng.uniform(*RUN_FOR))
        runner_wanted, relay_wanted = _runner_wanted(chaos), _relay_wanted(chaos, watch)
        coin, relay, aimed = rng.random() < 0.5, rng.choice(relays), rng.random() < AIMED_SHARE
        victim = runner if (coin if runner_wanted == relay_wanted else runner_wanted) else relay
        _start_jobs(session_factory, project, rng, per_round // 2, jobs)
        time.sleep(rng.uniform(*KILL_AFTER))
        if victim is runner:
            _kill_runner(runner, observer, chaos)
        else:
            _kill_relay(victim, observer, tap, chaos, aimed)
        chaos.kills[victim.name] += 1
        _start_jobs(session_factory, project, rng, per_round - per_round // 2, jobs)
        time.sleep(rng.uniform(*DEAD_FOR))
        restarted = time.monotonic()
        victim.start()
        chaos.restarting += time.monotonic() - restarted
    return chaos


# -- the test --------------------------------------------------------------------


@pytest.mark.timeout(420)
def test_kills_of_runner_and_relays_lose_and_double_no_step(
    session_factory: Any,
    database_url: str,
    relays: list[ManagedProcess],
    runner_process: ManagedProcess,
    observer: psycopg.Connection[Any],
    tap: PublicationTap,
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
    watch = ShardWatch(database_url)
    watch.start()
    try:
        chaos = _run_chaos(
            rng, runner_process, relays, observer, tap, watch, session_factory, project, jobs
        )
    finally:
        watch.stop()
    chaos_ended = time.monotonic()
    assert all(process.is_running() for process in [runner_process, *relays])

    job_ids = list(jobs)
    finished = _wait_until(lambda: not _running(session_factory, job_ids), SETTLE_TIMEOUT)
    settled = time.monotonic()
    assert finished, _report(session_factory, tap, seed, _running(session_factory, job_ids))
    drained = _wait_until(
        lambda: _scalar(session_factory, "SELECT count(*) FROM outbox") == 0, OUTBOX_DRAIN_TIMEOUT
    )
    assert drained, f"outbox not drained: {_report(session_factory, tap, seed, [])}"

    # nothing lost, nothing doubled
    _check_jobs(session_factory, seed, jobs)
    _check_processes(session_factory, seed, jobs)
    _check_effects(session_factory, seed, job_ids)
    inbox, publications = _check_messages(session_factory, tap, seed, test_started, len(jobs))

    # the chaos had effects
    copies = Counter(publication.message_id for publication in publications)
    doubled = {p for p in publications if copies[p.message_id] > 1}
    takeovers = watch.takeovers(chaos.killed_at)
    between = [h for h in watch.handovers if _relay(h.before) != _relay(h.after)]
    print("\n".join(chaos.log))
    print(
        f"crash test seed {seed}: {len(jobs)} jobs, {TASKS_PER_JOB * len(jobs)} steps;"
        f" {chaos.rounds} rounds, kills {dict(chaos.kills)} ({sum(chaos.kills.values())} in all);"
        f" runner kills cut {chaos.claims_cut} claimed step transactions,"
        f" {chaos.steps_cut} of them after t_add had run;"
        f" relay kills stranded {len(chaos.stranded)} published rows"
        f" ({chaos.stranded_steps()} step messages);"
        f" {len(between)} shard handovers between relays in {watch.samples} samples,"
        f" {len(takeovers)} of them takeovers from a killed relay;"
        f" {len(publications)} publications of {len(copies)} outbox rows,"
        f" published twice or more: {sum(1 for p in doubled if p.type == 'step')} step messages,"
        f" {sum(1 for p in doubled if p.type != 'step')} events; {inbox} inbox rows;"
        f" chaos {chaos_ended - began:.1f}s (restarts {chaos.restarting:.1f}s),"
        f" settled after {settled - chaos_ended:.1f}s, total {time.monotonic() - began:.1f}s"
    )
    kills = "\n".join(chaos.log)
    assert chaos.kills["runner"] >= MIN_RUNNER_KILLS and chaos.relay_kills >= MIN_RELAY_KILLS, (
        f"seed {seed}: too few kills in {MAX_ROUNDS} rounds: {dict(chaos.kills)}"
    )
    assert chaos.steps_cut >= 1, f"seed {seed}: no runner kill cut a step that had run:\n{kills}"
    assert chaos.stranded, f"seed {seed}: no relay kill left a published row undeleted:\n{kills}"
    not_again = {row: copies[row] for row in chaos.stranded if copies[row] < 2}
    assert not not_again, f"seed {seed}: stranded rows not published again: {not_again}"
    _check_doubled_steps(session_factory, seed, doubled)
    assert takeovers, f"seed {seed}: no shard was taken over from a killed relay: {between[:5]}"


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
    session_factory: Any, tap: PublicationTap, seed: int, since: datetime, jobs: int
) -> tuple[int, list[Publication]]:
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
    # one applied message per step: none lost, none applied twice under two ids
    assert len(inbox) == TASKS_PER_JOB * jobs, f"seed {seed}: {len(inbox)} steps applied"
    publications = list(tap.drain())
    published = {p.message_id for p in publications if p.type == "step"}
    # every published step message was applied; the others applied are steps a
    # runner ran straight from their outbox rows, never published
    unapplied = published - inbox
    assert not unapplied, f"seed {seed}: published step messages never applied: {unapplied}"
    died = _scalar(
        session_factory,
        "SELECT count(*) FROM inbox WHERE consumer = 'deadletters' AND received_at >= :t",
        t=since,
    )
    assert died == 0, f"seed {seed}: {died} step messages were dead-lettered"
    assert tap.messages_in(DEAD_QUEUE) == 0, f"seed {seed}: messages wait in {DEAD_QUEUE}"
    assert tap.messages_in(step_queue_name("t_add")) == 0
    return len(inbox), publications


def _check_doubled_steps(session_factory: Any, seed: int, doubled: set[Publication]) -> None:
    """At least one step message was published twice, and each such step had one effect."""
    processes = sorted({p.process_id for p in doubled if p.process_id is not None})
    assert processes, f"seed {seed}: no step message was published twice"
    effects = _rows(
        session_factory,
        "SELECT p.id, p.status, count(e.process_id) AS effects"
        " FROM process p LEFT JOIN test_effect e ON e.process_id = p.id"
        " WHERE p.id = ANY(CAST(:ids AS uuid[])) GROUP BY p.id",
        ids=processes,
    )
    not_once = [tuple(row) for row in effects if (row.status, row.effects) != ("succeeded", 1)]
    assert len(effects) == len(processes) and not not_once, (
        f"seed {seed}: steps published twice without exactly one effect: {not_once[:10]}"
    )


# -- outages of the servers --------------------------------------------------------

#: Jobs started just before each fault (so that it hits steps in flight), and while
#: the broker is down.
OUTAGE_BATCH = 80
WHILE_BROKER_DOWN = 40
#: Steps that must succeed after a batch of jobs started before the next fault
#: (the platform works again after the last one), and how long they may take.
STEPS_BEFORE_FAULT = 60
PROGRESS_TIMEOUT = 60.0
DATABASE_OUTAGE_SECONDS = 60.0
#: Seconds into the database outage the broker is killed (and booted again).
BROKER_CRASH_INTO_OUTAGE = 15.0
OUTAGE_SETTLE_TIMEOUT = 120.0
#: Deadlocks PostgreSQL detected in the current database since its statistics began.
DEADLOCKS = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"


SUCCEEDED_STEPS = "SELECT count(*) FROM process WHERE kind = 'task' AND status = 'succeeded'"


@dataclass
class Faults:
    """What the faults hit: per fault, the jobs unfinished at that moment."""

    unfinished: dict[str, int] = field(default_factory=dict)
    #: Per fault, the steps that succeeded between the batch before it and the fault.
    steps_before: dict[str, int] = field(default_factory=dict)
    #: Deadlocks counted before the database stopped (an immediate stop discards the count).
    deadlocks_before_outage: int = 0

    def start_batch(
        self,
        fault: str,
        session_factory: Any,
        project: str,
        rng: random.Random,
        jobs: dict[str, JobInput],
    ) -> None:
        """Start a batch of jobs and wait until steps succeed again, then note what is unfinished.

        Returns when STEPS_BEFORE_FAULT steps succeeded (or after PROGRESS_TIMEOUT:
        the test then fails on the count), so each fault hits a platform that
        works again after the previous one, with steps in flight.
        """
        before = _scalar(session_factory, SUCCEEDED_STEPS)
        _start_jobs(session_factory, project, rng, OUTAGE_BATCH, jobs)
        _wait_until(
            lambda: _scalar(session_factory, SUCCEEDED_STEPS) - before >= STEPS_BEFORE_FAULT,
            PROGRESS_TIMEOUT,
            interval=0.05,
        )
        self.steps_before[fault] = _scalar(session_factory, SUCCEEDED_STEPS) - before
        self.unfinished[fault] = len(_running(session_factory, list(jobs)))


@pytest.mark.timeout(300)
def test_a_database_outage_and_broker_crashes_lose_and_double_no_step(
    private_postgres: PrivatePostgres,
    private_rabbit: PrivateRabbit,
    autostep_process: Callable[..., ManagedProcess],
) -> None:
    """A 60 s database outage and two broker crashes, on private servers, under load.

    One runner and two relays work on a PostgreSQL server and a RabbitMQ node
    of this test's own. Two faults, each once a batch of jobs started and
    its first steps succeeded (so the platform works again after the fault
    before), while the rest of the batch runs: the broker is killed
    (SIGKILL) and booted again on its data while more jobs are started; the
    database stops at once (an immediate shutdown kills every session, as a
    crash would) and starts 60 s later, and 15 s into that outage the broker
    is killed and booted again, while the runner holds the messages it had
    for the database. A last batch of jobs starts when the database is back.
    No autostep process is restarted: each must ride the faults out. Then
    every job must have succeeded with one effect per step, in order;
    nothing may be dead-lettered or left in a queue; the runner and the
    relays must be the processes started at the beginning; and PostgreSQL
    must have detected no deadlock.
    """
    began = time.monotonic()
    rng = random.Random(0)
    url = private_postgres.create_database("autostep")
    upgrade(url)
    engine = make_engine(url=url)
    factory = make_session_factory(engine)
    project = "outages"
    with unit_of_work(factory) as session:
        session.execute(text(EFFECT_TABLE))
        create_project(session, project)
        publish_workflow(session, project, WORKFLOW)
    env = {"AUTOSTEP_DATABASE_URL": url, "AUTOSTEP_AMQP_URI": private_rabbit.uri}
    runner = autostep_process(
        "runner", "functions", "run", *RUNNER_MODULES, env=env, ready=runner_connected
    )
    ready = relay_holds_membership(url)
    relays = [
        autostep_process(name, "relay", env={**env, **RELAY_ENV}, ready=ready) for name in RELAYS
    ]
    processes = [runner, *relays]
    pids = {process.name: process.pid for process in processes}
    jobs: dict[str, JobInput] = {}
    faults = Faults()

    # 1. the broker crashes while steps run, and is down while jobs start
    faults.start_batch("broker crash 1", factory, project, rng, jobs)
    private_rabbit.crash()
    _start_jobs(factory, project, rng, WHILE_BROKER_DOWN, jobs)
    private_rabbit.start()

    # 2. the database is gone for a minute, and meanwhile the broker crashes again:
    #    the runner holds the messages it had, unacknowledged, for the database
    faults.start_batch("database outage", factory, project, rng, jobs)
    faults.deadlocks_before_outage = _scalar(factory, DEADLOCKS)
    private_postgres.stop()
    stopped = time.monotonic()
    engine.dispose()  # the test's own connections died with the server
    time.sleep(BROKER_CRASH_INTO_OUTAGE)
    private_rabbit.crash()
    private_rabbit.start()
    time.sleep(max(0.0, DATABASE_OUTAGE_SECONDS - (time.monotonic() - stopped)))
    private_postgres.start()
    outage = time.monotonic() - stopped

    # 3. more jobs while the backlog of the outage is worked off
    _start_jobs(factory, project, rng, OUTAGE_BATCH, jobs)
    faults_ended = time.monotonic()

    job_ids = list(jobs)

    def alive() -> dict[str, int | None]:
        return {process.name: process.pid for process in processes if process.is_running()}

    tap = Tap(private_rabbit.uri, [])
    try:
        finished = _wait_until(
            lambda: alive() != pids or not _running(factory, job_ids), OUTAGE_SETTLE_TIMEOUT
        )
        # nobody exited, nobody was restarted
        assert alive() == pids, f"processes that exited: {set(pids) - set(alive())}"
        assert [process.starts for process in processes] == [1, 1, 1]
        assert finished, _report(factory, tap, 0, _running(factory, job_ids))
        settled = time.monotonic()
        drained = _wait_until(
            lambda: _scalar(factory, "SELECT count(*) FROM outbox") == 0, OUTBOX_DRAIN_TIMEOUT
        )
        assert drained, f"outbox not drained: {_report(factory, tap, 0, [])}"
        dead = tap.messages_in(DEAD_QUEUE)
        waiting = tap.messages_in(step_queue_name("t_add"))
    finally:
        tap.close()
    print(
        f"\noutages: {len(jobs)} jobs, {TASKS_PER_JOB * len(jobs)} steps;"
        f" steps done since the batch before each fault {faults.steps_before},"
        f" jobs unfinished at it {faults.unfinished};"
        f" database down {outage:.1f}s; faults over after {faults_ended - began:.1f}s,"
        f" settled {settled - faults_ended:.1f}s later, total {time.monotonic() - began:.1f}s"
    )

    # each fault hit a working platform, with work in flight
    worked = {fault: steps >= STEPS_BEFORE_FAULT for fault, steps in faults.steps_before.items()}
    assert all(worked.values()), f"no progress before a fault: {faults.steps_before}"
    assert all(faults.unfinished.values()), f"a fault hit no unfinished job: {faults.unfinished}"
    # nothing lost, nothing doubled, nothing dead-lettered
    _check_jobs(factory, 0, jobs)
    _check_processes(factory, 0, jobs)
    _check_effects(factory, 0, job_ids)
    died = _scalar(factory, "SELECT count(*) FROM inbox WHERE consumer = 'deadletters'")
    assert (died, dead, waiting) == (0, 0, 0), "dead-lettered, dead, waiting step messages"
    # no deadlock: counted by PostgreSQL, and none reported to a process
    deadlocks = faults.deadlocks_before_outage + _scalar(factory, DEADLOCKS)
    reported = [p.name for p in processes if "deadlock detected" in p.output().lower()]
    assert (deadlocks, reported) == (0, []), "deadlocks detected, processes that saw one"
    engine.dispose()
