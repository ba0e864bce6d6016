"""The gateway's websocket ``/ws``, through real gateway processes and ``autostep watch``.

Each test runs the relay, a function runner and one or two gateways
(``autostep gateway run``, uvicorn in a process of its own) on this
session's database and vhost, and follows runs with ``autostep watch
--json`` processes, whose output is every frame they received, one JSON
line each. The runs themselves are started in the database, as any
trigger does.

What a follower must see: the snapshot first; then every version of
every job and process after the snapshot's, each once, in order; and,
applied to the snapshot, exactly the state the database holds once the
run has ended.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import httpx
import psycopg
import pytest

from autostep.catalog import create_project
from autostep.db import unit_of_work
from autostep.queries import job_view, wait_for_job
from autostep.settings import libpq_dsn
from tests.e2e.conftest import REPO_ROOT, ManagedProcess, autostep_command
from tests.helpers import publish, start
from tests.service.test_relay import BrokerProxy

pytestmark = pytest.mark.e2e

#: A fan-out between two steps; ``delay`` children of 0.6 s are marked running.
WORKFLOW: dict[str, Any] = {
    "name": "live",
    "steps": [
        {"name": "seed", "function": "noop", "next": [{"to": "fan"}]},
        {
            "name": "fan",
            "function": "delay",
            "for_each": "input.items",
            "input": {"seconds": "item"},
            "next": [{"to": "done"}],
        },
        {"name": "done", "function": "noop"},
    ],
}
#: One step whose output is its input.
ECHO: dict[str, Any] = {"name": "echo", "steps": [{"name": "echo", "function": "noop"}]}
#: Seconds to wait for a frame, a run, a log line.
WAIT = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Watcher:
    """``autostep watch --json`` in a process of its own; its frames, read back from its output."""

    def __init__(self, url: str, kind: str, ident: uuid.UUID, env: dict[str, str], out: Path):
        self.out = out
        self.err = out.with_suffix(".err")
        with self.out.open("w") as stdout, self.err.open("w") as stderr:
            self.popen = subprocess.Popen(
                autostep_command("watch", f"--{kind}", str(ident), "--json", "--url", url),
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )

    def frames(self) -> list[dict[str, Any]]:
        lines = self.out.read_text().splitlines(keepends=True)
        return [json.loads(line) for line in lines if line.endswith("\n")]

    def events(self) -> list[dict[str, Any]]:
        return [frame for frame in self.frames() if frame["type"] == "event"]

    def wait_for(self, what: str, holds: Callable[[list[dict[str, Any]]], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not holds(self.frames()):
            if self.popen.poll() is not None and not holds(self.frames()):
                raise AssertionError(
                    f"watch exited ({self.popen.returncode}) before {what}: {self.err.read_text()}"
                )
            assert time.monotonic() < deadline, f"no {what} after {WAIT}s: {self.frames()[-3:]}"
            time.sleep(0.05)

    def wait_snapshot(self) -> dict[str, Any]:
        self.wait_for("snapshot", lambda frames: any(f["type"] == "snapshot" for f in frames))
        return next(f for f in self.frames() if f["type"] == "snapshot")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(10)


@pytest.fixture
def gateway(
    tmp_path: Path, process_env: dict[str, str]
) -> Iterator[Callable[..., tuple[ManagedProcess, str]]]:
    """Factory: ``gateway(name, **env)`` starts a gateway; returns it and its ``/ws`` URL."""
    started: list[ManagedProcess] = []

    def start_gateway(name: str, **env: str) -> tuple[ManagedProcess, str]:
        port = _free_port()
        process = ManagedProcess(
            name,
            autostep_command("gateway", "run"),
            {**process_env, **env, "AUTOSTEP_HTTP_PORT": str(port)},
            tmp_path / f"{name}.log",
            ready=lambda p: "Application startup complete" in p.output(),
        )
        started.append(process)
        process.start()
        return process, f"ws://127.0.0.1:{port}/ws"

    yield start_gateway
    for process in started:
        process.close()


@pytest.fixture
def watcher(tmp_path: Path, process_env: dict[str, str]) -> Iterator[Callable[..., Watcher]]:
    """Factory: ``watcher(url, kind, id)`` starts ``autostep watch --json``; stopped at teardown."""
    started: list[Watcher] = []

    def start_watcher(url: str, kind: str, ident: uuid.UUID) -> Watcher:
        found = Watcher(url, kind, ident, process_env, tmp_path / f"watch{len(started)}.jsonl")
        started.append(found)
        return found

    yield start_watcher
    for found in started:
        found.stop()


@pytest.fixture
def project_id(session_factory: Any) -> uuid.UUID:
    with unit_of_work(session_factory) as session:
        project = create_project(session, f"live-{uuid.uuid4().hex[:8]}")
        return project.id


def _versions(events: list[dict[str, Any]]) -> dict[str, list[int]]:
    """The versions each job and process went through in ``events``, in arrival order."""
    seen: dict[str, list[int]] = {}
    for frame in events:
        kind = "job" if frame["event"] == "job.updated" else "process"
        seen.setdefault(f"{kind}:{frame['data']['id']}", []).append(frame["data"]["version"])
    return seen


def _apply(job: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """``job`` (a job view, or {} with no processes) with ``events`` of it applied."""
    state = {**job, "processes": {p["id"]: p for p in job.get("processes", [])}}
    for frame in events:
        data = frame["data"]
        if frame["event"] == "job.updated" and data["id"] == state.get("id", data["id"]):
            state.update(data)
        elif frame["event"] == "process.updated" and data["job_id"] == state["id"]:
            state["processes"][data["id"]] = data
    return state


def _final_view(session_factory: Any, job_id: uuid.UUID) -> dict[str, Any]:
    wait_for_job(session_factory, job_id, timeout=WAIT)
    with unit_of_work(session_factory) as session:
        view = job_view(session, job_id)
    return {**view, "processes": {p["id"]: p for p in view["processes"]}}


def _finished(job_id: uuid.UUID) -> Callable[[list[dict[str, Any]]], bool]:
    def holds(frames: list[dict[str, Any]]) -> bool:
        return any(
            f["type"] == "event"
            and f["event"] == "job.updated"
            and f["data"]["id"] == str(job_id)
            and f["data"]["status"] != "running"
            for f in frames
        )

    return holds


def test_a_run_arrives_in_version_order_after_the_snapshot(
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
    gateway: Callable[..., tuple[ManagedProcess, str]],
    watcher: Callable[..., Watcher],
    session_factory: Any,
    project_id: uuid.UUID,
) -> None:
    publish(session_factory, str(project_id), WORKFLOW)
    _, url = gateway("gateway")
    by_project = watcher(url, "project", project_id)
    assert by_project.wait_snapshot()["jobs"] == []

    job_id = start(session_factory, str(project_id), "live", {"items": [0, 0.6, 0, 0.6]})
    by_project.wait_for("the end of the run", _finished(job_id))

    frames = by_project.frames()
    assert frames[0]["type"] == "snapshot"
    assert {f["topic"] for f in frames} == {f"project:{project_id}"}
    events = by_project.events()
    # every version of the job and of its 8 processes, each once, in order
    versions = _versions(events)
    assert len(versions) == 1 + 1 + 1 + 4 + 1
    for entity, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), entity
    assert versions[f"job:{job_id}"][-1] >= 2
    assert max(len(seen) for seen in versions.values()) == 3  # queued, running, succeeded
    final = _final_view(session_factory, job_id)
    state = _apply({}, events)
    assert {key: state[key] for key in state if key != "processes"} == {
        key: final[key] for key in state if key != "processes"
    }
    assert state["processes"] == final["processes"]
    served = _metrics(url)
    assert served["autostep_ws_connections"] == 1
    assert served["autostep_ws_events_forwarded_total"] >= len(events)


def _metrics(ws_url: str) -> dict[str, float]:
    """The gateway's unlabelled metrics, from ``/metrics`` beside its ``/ws``."""
    http_url = ws_url.replace("ws://", "http://", 1).removesuffix("/ws")
    text = httpx.get(f"{http_url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_a_client_that_subscribes_mid_run_ends_with_the_exact_final_state(
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
    gateway: Callable[..., tuple[ManagedProcess, str]],
    watcher: Callable[..., Watcher],
    session_factory: Any,
    project_id: uuid.UUID,
) -> None:
    publish(session_factory, str(project_id), WORKFLOW)
    _, url = gateway("gateway")
    job_id = start(session_factory, str(project_id), "live", {"items": [0, 0.6, 0.9, 1.2, 1.5]})
    deadline = time.monotonic() + WAIT
    while True:  # until the run is under way: the seed and some children done
        with unit_of_work(session_factory) as session:
            done = [p for p in job_view(session, job_id)["processes"] if p["status"] != "queued"]
        if len(done) >= 3:
            break
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)

    following = watcher(url, "job", job_id)
    assert following.popen.wait(WAIT) == 0  # watching a job ends with the job: succeeded

    snapshot, *rest = following.frames()
    assert snapshot["type"] == "snapshot" and snapshot["topic"] == f"job:{job_id}"
    assert snapshot["job"]["status"] == "running"
    events = [frame for frame in rest if frame["type"] == "event"]
    assert events, "the run ended before the client subscribed"
    known = {f"job:{job_id}": snapshot["job"]["version"]}
    known.update({f"process:{p['id']}": p["version"] for p in snapshot["job"]["processes"]})
    for entity, seen in _versions(events).items():
        first = known.get(entity, 0) + 1  # nothing the snapshot holds, nothing skipped
        assert seen == list(range(first, first + len(seen))), entity
    assert _apply(snapshot["job"], events) == _final_view(session_factory, job_id)


def test_events_that_commit_while_the_snapshot_is_read_wait_for_it(
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
    gateway: Callable[..., tuple[ManagedProcess, str]],
    watcher: Callable[..., Watcher],
    session_factory: Any,
    project_id: uuid.UUID,
    database_url: str,
) -> None:
    publish(session_factory, str(project_id), WORKFLOW)
    _, url = gateway("gateway")
    job_id = start(session_factory, str(project_id), "live", {"items": [0.2, 0.2]})
    # the project's snapshot reads the project table, which the run does not touch:
    # locked, the snapshot waits while the whole run commits
    with psycopg.connect(libpq_dsn(database_url)) as lock:
        lock.execute("LOCK TABLE project IN ACCESS EXCLUSIVE MODE")
        by_project = watcher(url, "project", project_id)
        by_job = watcher(url, "job", job_id)  # not held up: it ends with the run
        assert by_job.popen.wait(WAIT) == 0
        assert by_project.frames() == []
    # by now the gateway has routed every event of the run to both subscriptions
    snapshot = by_project.wait_snapshot()
    (job,) = snapshot["jobs"]
    assert job["status"] == "succeeded"
    by_project.wait_for(
        "events after the snapshot", lambda frames: any(f["type"] == "event" for f in frames)
    )
    frames = by_project.frames()
    assert frames[0]["type"] == "snapshot"
    # (a slow run may leave the client 20 s without a frame: a ping comes in between)
    events = [frame for frame in frames[1:] if frame["type"] != "ping"]
    # the job's events are all in the snapshot; its processes' are not, so they follow
    assert {f["event"] for f in events} == {"process.updated"}
    assert [f["data"]["version"] for f in events if f["data"]["step"] == "done"] == [1, 2]


def test_every_gateway_replica_delivers_every_event(
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
    gateway: Callable[..., tuple[ManagedProcess, str]],
    watcher: Callable[..., Watcher],
    session_factory: Any,
    project_id: uuid.UUID,
) -> None:
    publish(session_factory, str(project_id), WORKFLOW)
    _, first_url = gateway("gateway-a")
    _, second_url = gateway("gateway-b")
    watchers = [
        watcher(first_url, "project", project_id),
        watcher(second_url, "project", project_id),
    ]
    for each in watchers:
        each.wait_snapshot()

    jobs = [start(session_factory, str(project_id), "live", {"items": [0, 0]}) for _ in range(3)]
    for each in watchers:
        for job_id in jobs:
            each.wait_for(f"the end of job {job_id}", _finished(job_id))

    received = [
        [(f["event"], f["data"]["id"], f["data"]["version"]) for f in each.events()]
        for each in watchers
    ]
    assert received[0] == received[1]
    versions = _versions(watchers[0].events())
    assert len(versions) == 3 * (1 + 1 + 1 + 2 + 1)
    for entity, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), entity


def test_a_slow_client_is_closed_and_the_others_keep_receiving(
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
    gateway: Callable[..., tuple[ManagedProcess, str]],
    watcher: Callable[..., Watcher],
    session_factory: Any,
    project_id: uuid.UUID,
) -> None:
    publish(session_factory, str(project_id), ECHO)
    server, url = gateway("gateway", AUTOSTEP_LIVE_SEND_BUFFER="64")
    fast, slow = _fast_and_stopped(watcher, url, project_id)
    try:
        # frames of 250 kB that do not compress, 20 runs at a time, until they are more
        # than the sockets between the gateway and the stopped client hold (about 4 MB)
        jobs: list[uuid.UUID] = []
        while "closed with 4008" not in server.output():
            assert len(jobs) < 160, f"the slow client was not closed:\n{server.tail()}"
            batch = _padded_runs(session_factory, project_id)
            for job_id in batch:  # the gateway has routed every event to both clients
                fast.wait_for(f"the end of job {job_id}", _finished(job_id))
            jobs += batch
            time.sleep(0.2)  # the log line follows the close
    finally:
        slow.popen.send_signal(signal.SIGCONT)
    _closed_as_slow(slow)

    jobs += [start(session_factory, str(project_id), "echo", {"n": n}) for n in range(3)]
    for job_id in jobs:
        fast.wait_for(f"the end of job {job_id}", _finished(job_id))
    assert fast.popen.poll() is None  # still connected
    assert len(slow.events()) < len(fast.events())
    assert _metrics(url)["autostep_ws_slow_clients_closed_total"] == 1


def test_a_client_that_stops_reading_is_closed_when_few_events_follow(
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
    gateway: Callable[..., tuple[ManagedProcess, str]],
    watcher: Callable[..., Watcher],
    session_factory: Any,
    project_id: uuid.UUID,
) -> None:
    publish(session_factory, str(project_id), ECHO)
    server, url = gateway("gateway", AUTOSTEP_LIVE_SEND_TIMEOUT="2")
    fast, slow = _fast_and_stopped(watcher, url, project_id)
    try:
        # about 10 MB of frames that do not compress: more than the sockets between the
        # gateway and the stopped client hold, far fewer frames than its send buffer (1,000)
        jobs = _padded_runs(session_factory, project_id)
        for job_id in jobs:
            fast.wait_for(f"the end of job {job_id}", _finished(job_id))
        # no event follows: only the send that waits on the full socket can close it
        deadline = time.monotonic() + WAIT
        while "closed with 4008" not in server.output():
            assert time.monotonic() < deadline, f"the client was not closed:\n{server.tail()}"
            time.sleep(0.1)
    finally:
        slow.popen.send_signal(signal.SIGCONT)
    _closed_as_slow(slow)
    assert fast.popen.poll() is None  # still connected
    assert _metrics(url)["autostep_ws_slow_clients_closed_total"] == 1


def _fast_and_stopped(
    watcher: Callable[..., Watcher], url: str, project_id: uuid.UUID
) -> tuple[Watcher, Watcher]:
    """Two clients on the project, both with their snapshot; the second one stopped (SIGSTOP).

    The stopped one reads nothing more, so its socket buffers fill up.
    """
    fast = watcher(url, "project", project_id)
    slow = watcher(url, "project", project_id)
    for each in (fast, slow):
        each.wait_snapshot()
    slow.popen.send_signal(signal.SIGSTOP)
    return fast, slow


def _padded_runs(session_factory: Any, project_id: uuid.UUID) -> list[uuid.UUID]:
    """20 runs whose events carry 250 kB that does not compress: about 5 MB of frames."""
    return [
        start(session_factory, str(project_id), "echo", {"pad": token_urlsafe(190_000)})
        for _ in range(20)
    ]


def _closed_as_slow(slow: Watcher) -> None:
    """The stopped client, let go again, finds itself closed with 4008."""
    assert slow.popen.wait(WAIT) == 1
    assert "the gateway closed the connection: 4008 slow client" in slow.err.read_text()


def _exchange(url: str, env: dict[str, str], count: int, *frames: str) -> list[dict[str, Any]]:
    """Send ``frames`` to the gateway at ``url``; the ``count`` frames that come back."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.live_client", url, str(count), *frames],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_bad_frames_get_an_error_naming_the_field_and_idle_clients_a_ping(
    gateway: Callable[..., tuple[ManagedProcess, str]],
    process_env: dict[str, str],
    project_id: uuid.UUID,
) -> None:
    _, url = gateway("gateway", AUTOSTEP_LIVE_PING_SECONDS="0.3")
    nobody = uuid.uuid4()
    frames = _exchange(
        url,
        process_env,
        10,
        "{not json",
        "[1]",
        json.dumps({"op": "listen"}),
        json.dumps({"op": "subscribe"}),
        json.dumps({"op": "subscribe", "topic": "job:42"}),
        json.dumps({"op": "subscribe", "topic": "team:1"}),
        json.dumps({"op": "subscribe", "topic": f"project:{project_id}", "limit": 0}),
        json.dumps({"op": "subscribe", "topic": f"job:{nobody}"}),
        json.dumps({"op": "unsubscribe", "topic": f"workflow:{nobody}"}),
        json.dumps({"op": "ping"}),
    )
    # replies to bad frames come in order; a snapshot's refusal when it has been read
    errors = sorted((f.get("field") or "", f.get("message") or "") for f in frames)
    assert errors == sorted(
        [
            (
                "frame",
                "not JSON: line 1, column 2: Expecting property name enclosed in double quotes",
            ),
            ("frame", "must be a JSON object"),
            ("op", "must be one of subscribe, unsubscribe, ping"),
            ("topic", "Field required"),
            ("topic", "'42' is not an id (a UUID)"),
            ("topic", "must be job:<id>, workflow:<id> or project:<id>"),
            ("limit", "Input should be greater than or equal to 1"),
            ("topic", f"no job {nobody}"),
            ("topic", "not subscribed"),
            ("", ""),
        ]
    )
    assert [f["type"] for f in frames].count("error") == 9
    assert {"type": "pong"} in frames
    # a client that sends nothing and is sent nothing gets pings
    assert _exchange(url, process_env, 2) == [{"type": "ping"}, {"type": "ping"}]


def test_after_losing_the_broker_each_subscription_gets_a_new_snapshot(
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
    gateway: Callable[..., tuple[ManagedProcess, str]],
    watcher: Callable[..., Watcher],
    session_factory: Any,
    project_id: uuid.UUID,
    amqp_uri: str,
) -> None:
    publish(session_factory, str(project_id), WORKFLOW)
    broker = BrokerProxy(amqp_uri)
    try:
        server, url = gateway("gateway", AUTOSTEP_AMQP_URI=broker.uri)
        job_id = start(session_factory, str(project_id), "live", {"items": [2.5, 3]})
        following = watcher(url, "job", job_id)
        following.wait_snapshot()
        broker.cut()  # events published meanwhile never reach this gateway
        assert following.popen.wait(WAIT) == 0
    finally:
        broker.close()

    snapshots = [f for f in following.frames() if f["type"] == "snapshot"]
    assert len(snapshots) == 2, server.tail()
    assert snapshots[0]["job"]["status"] == snapshots[1]["job"]["status"] == "running"
    frames = following.frames()
    after = frames[frames.index(snapshots[1]) + 1 :]
    events = [f for f in after if f["type"] == "event"]
    assert _apply(snapshots[1]["job"], events) == _final_view(session_factory, job_id)
