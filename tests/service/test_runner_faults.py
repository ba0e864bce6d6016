"""The function runner survives the servers' faults, each named by its promise.

Faults are injected under the production code path, on this session's own
database and vhost only: PostgreSQL backends terminated and new connections
refused (``ALLOW_CONNECTIONS false``), advisory locks held to make a step
wait or deadlock, a broker socket shut down under a consumer, bodies
published with py-amqp that are not JSON.

- A database outage longer than the delivery limit's worth of requeues costs
  no delivery: the message stays unacknowledged, the step runs again once the
  database answers, the job succeeds, nothing is dead-lettered.
- A step whose timeout cuts a statement short fails that attempt (it is
  retried as the policy says); its connection, mid-command, is dropped, never
  handed to the next step.
- A deadlock is retried at once, in the runner, with one log line: no
  traceback, no failed attempt.
- An ack on a connection the broker dropped logs one line; the broker gives
  the message back.
- A body that is not JSON or not UTF-8 is dead-lettered, not dropped.
- SIGTERM stops a runner within its stop timeout even while a step waits on
  the database; the step is abandoned, not failed, and its message comes back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import amqp
import eventlet
import psycopg
import pytest
from kombu import Connection as KombuConnection
from kombu import Exchange, Producer, Queue
from pydantic import BaseModel
from sqlalchemy import create_engine, select, text

from autostep import StepContext, function
from autostep.db import make_session_factory, unit_of_work
from autostep.functions.deadletters import DeadLetterService
from autostep.functions.entrypoint import StepQueueConsumer
from autostep.functions.runner import StepOutcome, run_step
from autostep.functions.service import service_for
from autostep.models import Outbox, Process
from autostep.nameko_runtime import nameko_config
from autostep.relay import Relay
from autostep.sdk import REGISTRY
from autostep.settings import amqp_params, get_settings, libpq_dsn
from autostep.topology import DEAD_QUEUE, STEPS_EXCHANGE, declare_base, step_queue_name
from tests.e2e.conftest import ManagedProcess, autostep_command, runner_connected
from tests.helpers import publish, start
from tests.stepfuncs import Locks, Loose, locks

#: Seconds the outage test keeps the database unreachable: longer than the
#: delivery limit (3 here) times the pause of a requeue (1 s).
OUTAGE_SECONDS = 8.0
#: The subprocess runner's stop timeout, and how much longer SIGTERM may take.
STOP_TIMEOUT = 2.0
STOP_MARGIN = 6.0

RUNNER_LOGGERS = ("autostep.functions", "nameko", "kombu")


@function(name="t_outage", retries=3)
def outage_step(inp: Locks, ctx: StepContext) -> Loose:
    """``t_locks`` on a queue only the outage test declares (with its delivery limit)."""
    return locks(inp, ctx)


# -- helpers --------------------------------------------------------------------


def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    with eventlet.Timeout(timeout, AssertionError("condition not reached in time")):
        while not condition():
            eventlet.sleep(0.05)


def _query(database_url: str, sql: str, *params: Any) -> Any:
    """The first column of the first row, on a fresh connection (pools may be dead)."""
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def _process(database_url: str, job_id: uuid.UUID) -> dict[str, Any]:
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as conn:
        cursor = conn.execute(
            "SELECT id, status::text, attempt, error FROM process WHERE job_id = %s", (job_id,)
        )
        (row,) = cursor.fetchall()
    return dict(zip(("id", "status", "attempt", "error"), row, strict=True))


def _job_status(database_url: str, job_id: uuid.UUID) -> str | None:
    try:
        status = _query(database_url, "SELECT status::text FROM job WHERE id = %s", job_id)
    except psycopg.OperationalError:
        return None  # the database is still out
    return str(status)


def _waits_for_lock(database_url: str, key: int, *, granted: bool = False) -> bool:
    """Whether a session of the test database holds (or waits for) advisory lock ``key``."""
    sql = """
        SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory' AND objid = %s AND granted = %s
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
    """
    return bool(_query(database_url, sql, key, granted))


def _counts(database_url: str, process_id: uuid.UUID) -> tuple[int, int]:
    """(calls, committed effects) of a test function's process."""
    calls = _query(database_url, "SELECT count(*) FROM test_call WHERE process_id = %s", process_id)
    effects = _query(
        database_url, "SELECT count(*) FROM test_effect WHERE process_id = %s", process_id
    )
    return int(calls), int(effects)


def _lock_key() -> int:
    return random.randrange(1, 2**31)


def _runner_records(caplog: Any) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(RUNNER_LOGGERS)]


@pytest.fixture
def admin(server_urls: tuple[str, str]) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the server's maintenance database, outside the test database."""
    with psycopg.connect(libpq_dsn(server_urls[0]), autocommit=True) as conn:
        yield conn


# -- database outages -------------------------------------------------------------


@contextlib.contextmanager
def _outage(admin: psycopg.Connection[Any], database_url: str) -> Iterator[None]:
    """The test database is out inside: no new connections, every session ended.

    (The step's, the lock holder's, the pools'.)
    """
    name = urlparse(database_url).path[1:]
    try:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        yield
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def test_a_database_outage_longer_than_the_delivery_limit_costs_no_delivery(
    session_factory: Any,
    project: str,
    database_url: str,
    amqp_uri: str,
    admin: psycopg.Connection[Any],
    delivery_limit: int,
    runner_factory: Any,
    relay: Any,
    effect_table: None,
    caplog: Any,
) -> None:
    caplog.set_level(logging.INFO)
    runner = runner_factory(nameko_config(), DeadLetterService, service_for(REGISTRY["t_outage"]))
    runner.start()
    publish(
        session_factory,
        project,
        {"name": "outage", "steps": [{"name": "s", "function": "t_outage"}]},
    )
    key = _lock_key()
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        job_id = start(session_factory, project, "outage", {"keys": [key]})
        _until(lambda: _waits_for_lock(database_url, key))  # the step is in its transaction
        with _outage(admin, database_url):
            eventlet.sleep(OUTAGE_SECONDS)
    _until(lambda: _job_status(database_url, job_id) in ("succeeded", "failed"), timeout=30)

    process = _process(database_url, job_id)
    assert _job_status(database_url, job_id) == "succeeded", process
    assert process["attempt"] == 1 and process["error"] is None  # the outage failed nothing
    assert _counts(database_url, process["id"]) == (2, 1)  # cut by the outage, then once more
    probe = amqp.Connection(**amqp_params(amqp_uri))
    probe.connect()
    try:
        dead = probe.channel().queue_declare(DEAD_QUEUE, passive=True).message_count
    finally:
        probe.close()
    assert dead == 0
    messages = [r.getMessage() for r in _runner_records(caplog)]
    assert not [r for r in caplog.records if r.name == "autostep.functions.deadletters"]
    assert len([m for m in messages if "holding messages unacknowledged" in m]) == 1
    assert len([m for m in messages if "database answers again" in m]) == 1
    assert not [r.getMessage() for r in _runner_records(caplog) if r.exc_info]


class Nap(BaseModel):
    seconds: float


@function(name="t_slow_sql", retries=1, backoff=0.01, timeout=0.3)
def slow_sql(inp: Nap, ctx: StepContext) -> Loose:
    """Runs a statement of ``seconds``: past its 0.3 s timeout if told to."""
    ctx.session.execute(text("SELECT pg_sleep(:s)"), {"s": inp.seconds})
    return Loose(slept=inp.seconds)


def _step_message(session_factory: Any, job_id: uuid.UUID) -> tuple[Any, str]:
    """The body and message id of the job's newest step message."""
    with unit_of_work(session_factory) as session:
        process = session.scalar(select(Process.id).where(Process.job_id == job_id))
        row = session.scalar(
            select(Outbox)
            .where(Outbox.type == "step", Outbox.aggregate_id == process)
            .order_by(Outbox.seq.desc())
            .limit(1)
        )
        assert row is not None
        return row.payload, str(row.id)


def test_a_timeout_inside_a_statement_is_a_failed_attempt_and_its_connection_is_dropped(
    session_factory: Any, project: str, database_url: str
) -> None:
    definition = {"name": "slowsql", "steps": [{"name": "s", "function": "t_slow_sql"}]}
    publish(session_factory, project, definition)
    slow = start(session_factory, project, "slowsql", {"seconds": 5})
    fast = start(session_factory, project, "slowsql", {"seconds": 0})
    # one connection: the fast step gets the one the timeout cut short, unless dropped
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    tiny = make_session_factory(engine)
    spec = REGISTRY["t_slow_sql"]
    try:
        outcomes = [
            run_step(tiny, spec, *_step_message(session_factory, job), consumer="fn_t_slow_sql")
            for job in (slow, fast)
        ]
    finally:
        engine.dispose()

    assert outcomes == [StepOutcome.RETRYING, StepOutcome.SUCCEEDED]
    process = _process(database_url, slow)
    assert process["attempt"] == 2
    assert process["error"] == "RetryableError: timed out after 0.3s"


def test_a_runner_stopping_during_an_outage_gives_the_held_message_back(
    session_factory: Any,
    project: str,
    database_url: str,
    admin: psycopg.Connection[Any],
    delivery_limit: int,
    runner_factory: Any,
    relay: Any,
    effect_table: None,
    caplog: Any,
) -> None:
    caplog.set_level(logging.INFO)
    services = (nameko_config(), DeadLetterService, service_for(REGISTRY["t_outage"]))
    first = runner_factory(*services)
    first.start()
    definition = {"name": "outstop", "steps": [{"name": "s", "function": "t_outage"}]}
    publish(session_factory, project, definition)
    key = _lock_key()
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        job_id = start(session_factory, project, "outstop", {"keys": [key]})
        _until(lambda: _waits_for_lock(database_url, key))
        with _outage(admin, database_url):
            _until(lambda: any("holding messages" in r.getMessage() for r in caplog.records))
            stopping = eventlet.spawn(first.stop)
            # a held message does not keep its runner from stopping
            with eventlet.Timeout(STOP_MARGIN, AssertionError("the runner did not stop")):
                stopping.wait()
    second = runner_factory(*services)
    second.start()  # the message came back to the queue: the next runner runs it
    _until(lambda: _job_status(database_url, job_id) in ("succeeded", "failed"))

    process = _process(database_url, job_id)
    assert _job_status(database_url, job_id) == "succeeded"
    assert process["attempt"] == 1 and process["error"] is None
    assert _counts(database_url, process["id"]) == (2, 1)
    given_back = [r.getMessage() for r in caplog.records if "giving message" in r.getMessage()]
    assert len(given_back) == 1


# -- deadlocks ----------------------------------------------------------------------


def test_a_deadlock_runs_the_step_again_at_once_without_a_traceback(
    session_factory: Any,
    project: str,
    database_url: str,
    relay: Any,
    functions: Any,
    wait_for_job: Any,
    caplog: Any,
) -> None:
    caplog.set_level(logging.INFO)
    publish(
        session_factory, project, {"name": "dead", "steps": [{"name": "s", "function": "t_locks"}]}
    )
    first, second = _lock_key(), _lock_key()
    with psycopg.connect(libpq_dsn(database_url)) as holder:
        # the step takes `first` then waits for `second`, which we hold; we then ask
        # for `first`: a deadlock, which the step's backend detects first
        holder.execute("SET deadlock_timeout = '10s'")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (second,))
        job_id = start(session_factory, project, "dead", {"keys": [first, second]})
        _until(lambda: _waits_for_lock(database_url, second))
        assert _waits_for_lock(database_url, first, granted=True)
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (first,))
        holder.commit()

    view = wait_for_job(job_id)

    assert view["status"] == "succeeded"
    process = view["processes"][0]
    assert process["attempt"] == 1  # a deadlock is no failed attempt
    assert _counts(database_url, process["id"]) == (2, 1)
    retried = [
        r.getMessage()
        for r in caplog.records
        if r.name == "autostep.functions.runner" and "DeadlockDetected" in r.getMessage()
    ]
    assert len(retried) == 1 and "running its transaction again" in retried[0]
    assert not [r.getMessage() for r in _runner_records(caplog) if r.exc_info]


# -- the broker ---------------------------------------------------------------------


def test_an_ack_on_a_connection_the_broker_dropped_logs_one_line_and_the_message_comes_back(
    amqp_uri: str, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    name = f"test.ack.{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(""), routing_key=name, queue_arguments={"x-queue-type": "quorum"})
    message_id = str(uuid.uuid4())
    with KombuConnection(amqp_uri) as connection:
        channel = connection.channel()
        bound = queue(channel)
        bound.declare()
        Producer(channel).publish({"n": 1}, routing_key=name, message_id=message_id)
        message = _get(bound, no_ack=False)
        consumer = StepQueueConsumer(amqp_uri, queues=[queue])
        # the connection dies under the consumer: the ack hits a dead socket
        connection.connection.sock.shutdown(socket.SHUT_RDWR)

        consumer.ack_message(message)  # must not raise

    lines = [r.getMessage() for r in caplog.records if r.name == "autostep.functions.entrypoint"]
    assert len(lines) == 1 and f"could not ack message {message_id}" in lines[0]
    with KombuConnection(amqp_uri) as connection:
        again = queue(connection.channel())
        back = _get(again, no_ack=True)
        again.delete()
    assert back.properties["message_id"] == message_id
    assert back.headers["x-delivery-count"] == 1  # delivered once before


def _get(queue: Any, *, no_ack: bool) -> Any:
    """The next message of a bound kombu ``queue``, waiting for it."""
    found: list[Any] = []

    def got() -> bool:
        message = queue.get(no_ack=no_ack)
        if message is not None:
            found.append(message)
        return bool(found)

    _until(got)
    return found[0]


def test_a_body_that_is_not_json_or_not_utf8_is_dead_lettered_not_dropped(
    amqp_uri: str, functions: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    conn = amqp.Connection(**amqp_params(amqp_uri))
    conn.connect()
    channel = conn.channel()
    declare_base(channel)
    bodies = {str(uuid.uuid4()): b"\xff\xfe{", str(uuid.uuid4()): b"{not json"}
    for message_id, body in bodies.items():
        channel.basic_publish(
            amqp.Message(
                body, message_id=message_id, content_type="application/json", delivery_mode=2
            ),
            exchange=STEPS_EXCHANGE,
            routing_key="t_add",
        )

    def logged(text: str, queue: str) -> list[str]:
        return [
            m
            for r in caplog.records
            if r.name == "autostep.functions.entrypoint"
            and text in (m := r.getMessage())
            and queue in m
        ]

    _until(lambda: len(logged("dropping undecodable dead letter", DEAD_QUEUE)) == 2)
    rejected = logged("dead-lettering undecodable message", step_queue_name("t_add"))
    waiting = channel.queue_declare(step_queue_name("t_add"), passive=True).message_count
    dead = channel.queue_declare(DEAD_QUEUE, passive=True).message_count
    conn.close()
    assert len(rejected) == 2
    for message_id in bodies:
        assert [m for m in rejected if message_id in m]
        assert [m for m in logged("dropping undecodable", DEAD_QUEUE) if message_id in m]
    assert waiting == 0 and dead == 0
    assert not [r for r in caplog.records if "decode message body" in r.getMessage()]
    assert not [r.getMessage() for r in _runner_records(caplog) if r.exc_info]


class BrokerProxy:
    """A TCP proxy in front of the broker that the test can take down.

    A runner pointed at it loses its broker when :meth:`down` closes every
    connection and the listening socket (new connections are refused), the
    way a crashed broker looks to it; the shared broker is never touched.
    """

    def __init__(self, amqp_uri: str) -> None:
        parts = urlparse(amqp_uri)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.listener = eventlet.listen(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.uri = parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{self.port}")
        self.sockets: list[socket.socket] = []
        self.threads = [eventlet.spawn(self._accept)]

    @property
    def amqp_uri(self) -> str:
        return self.uri.geturl()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = eventlet.connect(self.upstream)
            self.sockets += [client, server]
            self.threads += [
                eventlet.spawn(self._pump, client, server),
                eventlet.spawn(self._pump, server, client),
            ]

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)

    def down(self) -> None:
        for thread in self.threads:
            thread.kill()
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


# -- stopping ---------------------------------------------------------------------


@pytest.fixture
def running_mark_soon(platform_env: dict[str, str]) -> Iterator[float]:
    """Steps are marked running after 0.05 s instead of 0.5 s."""
    os.environ["AUTOSTEP_RUNNING_MARK_SECONDS"] = "0.05"
    get_settings.cache_clear()
    yield 0.05
    del os.environ["AUTOSTEP_RUNNING_MARK_SECONDS"]
    get_settings.cache_clear()


def test_a_worker_killed_while_its_step_fails_records_no_failure(
    session_factory: Any,
    project: str,
    database_url: str,
    running_mark_soon: float,
    runner_factory: Any,
    effect_table: None,
) -> None:
    # t_sleepy times out after 0.2 s; its running mark, started at 0.05 s, waits
    # for the process row we hold, so the worker waits for the mark when it is killed
    runner = runner_factory(nameko_config(), service_for(REGISTRY["t_sleepy"]))
    runner.start()
    definition = {"name": "killed", "steps": [{"name": "s", "function": "t_sleepy"}]}
    publish(session_factory, project, definition)
    job_id = start(session_factory, project, "killed", {"seconds": 1.0})
    process_id = _process(database_url, job_id)["id"]
    waiting_mark = """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND wait_event_type = 'Lock'
          AND query LIKE 'UPDATE process%%'
    """
    relay = Relay()
    with psycopg.connect(libpq_dsn(database_url)) as holder:
        holder.execute("SELECT 1 FROM process WHERE id = %s FOR UPDATE", (process_id,))
        thread = eventlet.spawn(relay.run)  # publishes the step only now
        try:
            _until(lambda: bool(_query(database_url, waiting_mark)))
            eventlet.sleep(0.3)  # the step timed out: its worker waits for the mark

            runner.kill()

            holder.rollback()  # a worker that survived its kill would now record the failure
            eventlet.sleep(0.5)
        finally:
            relay.stop()
            thread.wait()

    process = _process(database_url, job_id)
    assert process["attempt"] == 1 and process["error"] is None, process


def test_sigterm_stops_a_runner_whose_broker_is_down(
    platform_env: dict[str, str], amqp_uri: str, effect_table: None, tmp_path: Path
) -> None:
    proxy = BrokerProxy(amqp_uri)
    env = {
        **os.environ,
        **platform_env,
        "AUTOSTEP_AMQP_URI": proxy.amqp_uri,
        "PYTHONUNBUFFERED": "1",
        "AUTOSTEP_STOP_TIMEOUT_SECONDS": str(STOP_TIMEOUT),
    }
    command = autostep_command("functions", "run", "tests.stepfuncs")
    runner = ManagedProcess("runner", command, env, tmp_path / "runner.log", runner_connected)
    try:
        runner.start()
        proxy.down()
        _until(lambda: "cannot connect to the broker" in runner.output())  # reconnecting

        code = runner.terminate(timeout=STOP_TIMEOUT + STOP_MARGIN)
    finally:
        runner.close()
        proxy.down()

    assert code == 0, runner.tail()  # not killed by the test's SIGKILL
    assert "Traceback" not in runner.output()


def test_sigterm_abandons_a_step_waiting_on_the_database_and_its_message_comes_back(
    session_factory: Any,
    project: str,
    database_url: str,
    platform_env: dict[str, str],
    relay: Any,
    effect_table: None,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        **platform_env,
        "PYTHONUNBUFFERED": "1",
        "AUTOSTEP_STOP_TIMEOUT_SECONDS": str(STOP_TIMEOUT),
    }
    command = autostep_command("functions", "run", "tests.stepfuncs")
    runner = ManagedProcess("runner", command, env, tmp_path / "runner.log", runner_connected)
    publish(
        session_factory, project, {"name": "stuck", "steps": [{"name": "s", "function": "t_locks"}]}
    )
    key = _lock_key()
    try:
        runner.start()
        with psycopg.connect(libpq_dsn(database_url), autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (key,))
            job_id = start(session_factory, project, "stuck", {"keys": [key]})
            _until(lambda: _waits_for_lock(database_url, key))

            code = runner.terminate(timeout=STOP_TIMEOUT + STOP_MARGIN)
            output = runner.output()

            assert code == 0, output  # not killed by the test's SIGKILL
            assert "abandoning the running steps" in output
            process = _process(database_url, job_id)
            assert process["attempt"] == 1 and process["error"] is None, process
        runner.start()  # the lock is free now: the message comes back and runs
        _until(lambda: _job_status(database_url, job_id) in ("succeeded", "failed"))
    finally:
        runner.close()

    assert _job_status(database_url, job_id) == "succeeded", runner.tail()
    process = _process(database_url, job_id)
    assert process["attempt"] == 1
    assert _counts(database_url, process["id"]) == (2, 1)


@function(name="t_other_arguments", retries=0)
def other_arguments_step(inp: Locks, ctx: StepContext) -> Loose:
    """``t_locks`` on a queue the test declares beforehand with other arguments."""
    return locks(inp, ctx)


def test_a_runner_consumes_a_step_queue_that_exists_with_other_arguments(
    session_factory: Any,
    project: str,
    relay: Any,
    runner_factory: Any,
    effect_table: None,
    amqp_uri: str,
    wait_for_job: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A changed delivery limit meets queues declared with the old one: used as they are."""
    queue = step_queue_name("t_other_arguments")
    admin = amqp.Connection(**amqp_params(amqp_uri))
    admin.connect()
    channel = admin.channel()
    channel.queue_delete(queue)
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": 3}
    channel.queue_declare(queue, durable=True, auto_delete=False, arguments=arguments)
    try:
        with caplog.at_level(logging.WARNING, logger="autostep"):
            runner = runner_factory(nameko_config(), service_for(REGISTRY["t_other_arguments"]))
            runner.start()
            publish(
                session_factory,
                project,
                {"name": "other", "steps": [{"name": "s", "function": "t_other_arguments"}]},
            )
            view = wait_for_job(start(session_factory, project, "other", {}), timeout=20)
    finally:
        channel.queue_delete(queue)
        admin.close()
    assert view["status"] == "succeeded"
    mismatches = [r for r in caplog.records if "exists with other arguments" in r.getMessage()]
    # one from the runner as it connected, one from the relay as it first published
    assert len(mismatches) == 2, [r.getMessage() for r in mismatches]
