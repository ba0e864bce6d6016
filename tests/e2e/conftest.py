"""End-to-end fixtures: autostep processes started as a user starts them.

Every process is the ``autostep`` console script (``autostep relay``,
``autostep functions run ...``) in a subprocess, with this session's
``AUTOSTEP_DATABASE_URL`` and ``AUTOSTEP_AMQP_URI`` and the repository root
as working directory, so ``tests.stepfuncs`` imports (or a user project's
directory, with its own modules). :class:`ManagedProcess` starts, SIGKILLs,
SIGTERMs and restarts one of them; its output goes to a file in ``tmp_path``
whose tail is printed when the test fails. Every process a test started is
stopped at teardown.

Override points: ``relay_settings``, ``runner_settings`` and
``gateway_settings`` (extra environment variables for those processes).
``gateway`` serves the HTTP gateway on a free port (``start_gateway``
starts more); ``api`` is an httpx client of it.

``private_postgres`` and ``private_rabbit`` start servers of the test's own
(:mod:`tests.e2e.servers`), for tests that stop or crash a server; they are
stopped and removed at teardown, also when the test fails.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import psycopg
import pytest

from autostep.relay import MEMBER_LOCK
from autostep.settings import libpq_dsn
from tests.conftest import in_ci
from tests.e2e.servers import (
    POSTGRES_BINARIES,
    RABBITMQ_BINARIES,
    PrivatePostgres,
    PrivateRabbit,
    missing_binaries,
)

__all__ = [
    "REPO_ROOT",
    "Cli",
    "Gateway",
    "ManagedProcess",
    "autostep_command",
    "free_port",
    "http_answers",
    "http_ok",
    "runner_connected",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The modules the function runner serves: the built-ins and the test functions.
RUNNER_MODULES = ("autostep.functions.builtins", "tests.stepfuncs")
#: Seconds a process may take to become ready, and to stop after SIGTERM.
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
TAIL_LINES = 40


def autostep_command(*args: str) -> list[str]:
    """The ``autostep`` console script of this interpreter's environment, with ``args``."""
    script = Path(sys.executable).with_name("autostep")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "autostep.cli", *args]


class ManagedProcess:
    """One long-running ``autostep`` process that a test can crash and restart.

    Output of every incarnation is appended to ``log_path``; ``ready`` (called
    with the process) says when a fresh incarnation is able to work.
    """

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        ready: Callable[[ManagedProcess], bool] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.args = args
        self.env = env
        self.log_path = log_path
        self.ready = ready
        self.starts = 0
        self.kills = 0
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None
        self._log_offset = 0

    @property
    def incarnation(self) -> str:
        """``name#n`` for the n-th start, the ``application_name`` of its sessions."""
        return f"{self.name}#{self.starts}"

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def start(self, *, wait: bool = True) -> None:
        """Start a new incarnation; with ``wait``, return once it is ready."""
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.starts += 1
        self._log = self._log or self.log_path.open("a", encoding="utf-8")
        self._log.write(f"\n----- {self.name} start #{self.starts} at {time.strftime('%X')}\n")
        self._log.flush()
        self._log_offset = self._log.tell()
        self._popen = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            # libpq names this incarnation's database sessions after it
            env={**self.env, "PGAPPNAME": self.incarnation},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.ready is not None and not self.ready(self):
            if not self.is_running():
                raise RuntimeError(f"{self.name} exited while starting:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self._popen is None or not self.is_running():
            raise RuntimeError(f"{self.name} is not running")
        self._popen.send_signal(signal.SIGKILL)
        self._popen.wait()
        self.kills += 1
        self._note(f"killed with SIGKILL (pid {self._popen.pid})")

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait for a graceful exit (SIGKILL after ``timeout``); the exit code."""
        if self._popen is None:
            return None
        if self.is_running():
            self._popen.terminate()
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._note(f"did not stop within {timeout}s of SIGTERM; SIGKILL")
                self._popen.kill()
                self._popen.wait()
        return self._popen.returncode

    def restart(self, *, wait: bool = True) -> None:
        self.terminate()
        self.start(wait=wait)

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def output(self) -> str:
        """What the current incarnation wrote so far."""
        with self.log_path.open(encoding="utf-8", errors="replace") as log:
            log.seek(self._log_offset)
            return log.read()

    def tail(self, lines: int = TAIL_LINES) -> str:
        if not self.log_path.exists():
            return ""
        content = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(content.splitlines()[-lines:])

    def close(self) -> None:
        self.terminate()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _note(self, message: str) -> None:
        if self._log is not None:
            self._log.write(f"----- {self.name} {message}\n")
            self._log.flush()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running() else "stopped"
        return f"<ManagedProcess {self.name} {state}, {self.starts} starts, {self.kills} kills>"


def runner_connected(process: ManagedProcess) -> bool:
    """Readiness of a function runner: every service it started has connected."""
    output = process.output()
    services = re.search(r"starting services: (.*)$", output, re.MULTILINE)
    if services is None:
        return False
    return output.count("Connected to amqp://") >= len(services.group(1).split(","))


def relay_holds_membership(database_url: str) -> Callable[[ManagedProcess], bool]:
    """Readiness of a relay: a session of this incarnation holds the membership lock."""
    query = """
        SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s
          AND l.objsubid = 2 AND a.application_name = %s
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    """

    def ready(process: ManagedProcess) -> bool:
        with psycopg.connect(libpq_dsn(database_url), autocommit=True) as conn:
            row = conn.execute(query, (MEMBER_LOCK, process.incarnation)).fetchone()
        return bool(row and row[0])

    return ready


# -- hooks --------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can see a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"report_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def process_env(platform_env: dict[str, str]) -> dict[str, str]:
    """The environment of every process: ours plus the session's platform settings."""
    return {**os.environ, **platform_env, "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def autostep_process(
    request: pytest.FixtureRequest, tmp_path: Path, process_env: dict[str, str]
) -> Iterator[Callable[..., ManagedProcess]]:
    """Factory: ``autostep_process(name, *args, env=..., ready=..., cwd=...)`` starts one.

    Every process started through it is stopped at teardown; when the test
    failed, the tail of each one's output is printed.
    """
    started: list[ManagedProcess] = []

    def start(
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        ready: Callable[[ManagedProcess], bool] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> ManagedProcess:
        process = ManagedProcess(
            name,
            autostep_command(*args),
            {**process_env, **(env or {})},
            tmp_path / f"{name}.log",
            ready,
            cwd,
        )
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.close()
    if _failed(request):
        for process in started:
            print(f"\n===== {process!r}: last {TAIL_LINES} lines of {process.log_path}")
            print(process.tail())


def _need(binaries: tuple[str, ...]) -> None:
    missing = missing_binaries(binaries)
    if missing:
        message = f"{', '.join(missing)} not on PATH: install the server to run this test"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running PostgreSQL server of this test alone, which it may stop and start."""
    _need(POSTGRES_BINARIES)
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def private_rabbit() -> Iterator[PrivateRabbit]:
    """A running RabbitMQ node of this test alone, which it may crash and start."""
    _need(RABBITMQ_BINARIES)
    server = PrivateRabbit()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def relay_settings() -> dict[str, str]:
    """Extra environment variables for the relay (override point)."""
    return {}


@pytest.fixture
def runner_settings() -> dict[str, str]:
    """Extra environment variables for the function runner (override point)."""
    return {}


@pytest.fixture
def relay_process(
    autostep_process: Callable[..., ManagedProcess],
    database_url: str,
    relay_settings: dict[str, str],
) -> ManagedProcess:
    """``autostep relay``, ready once it holds its membership lock."""
    return autostep_process(
        "relay", "relay", env=relay_settings, ready=relay_holds_membership(database_url)
    )


@pytest.fixture
def runner_process(
    autostep_process: Callable[..., ManagedProcess],
    runner_settings: dict[str, str],
    effect_table: None,
) -> ManagedProcess:
    """``autostep functions run`` of the built-ins and ``tests.stepfuncs``, ready once connected."""
    return autostep_process(
        "runner",
        "functions",
        "run",
        *RUNNER_MODULES,
        env=runner_settings,
        ready=runner_connected,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within half a second."""
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False


def http_answers(url: str) -> Callable[[ManagedProcess], bool]:
    """Readiness of the HTTP gateway: ``url`` answers 200."""
    return lambda process: http_ok(url)


@pytest.fixture
def gateway_settings() -> dict[str, str]:
    """Extra environment variables for the HTTP gateway (override point)."""
    return {}


@dataclass(frozen=True)
class Gateway:
    """The HTTP gateway a test started: its process and base URL."""

    process: ManagedProcess
    url: str


@pytest.fixture
def start_gateway(
    autostep_process: Callable[..., ManagedProcess], gateway_settings: dict[str, str]
) -> Callable[..., Gateway]:
    """Factory: ``start_gateway(name="gateway", **env)`` serves a gateway on a free port.

    Ready once ``/healthz`` answers; ``env`` adds to ``gateway_settings``.
    """

    def start(name: str = "gateway", **env: str) -> Gateway:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = autostep_process(
            name,
            "gateway",
            "run",
            env={**gateway_settings, **env, "AUTOSTEP_HTTP_PORT": str(port)},
            ready=http_answers(f"{url}/healthz"),
        )
        return Gateway(process, url)

    return start


@pytest.fixture
def gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    """``autostep gateway run`` on a free port, with this session's database and broker."""
    return start_gateway()


@pytest.fixture
def api(gateway: Gateway) -> Iterator[httpx.Client]:
    """An HTTP client of the gateway."""
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


Cli = Callable[..., "subprocess.CompletedProcess[str]"]

#: Seconds one CLI command may take (``--follow`` waits for the whole run).
CLI_TIMEOUT = 90.0


@pytest.fixture
def cli(process_env: dict[str, str]) -> Cli:
    """Runs ``autostep ARGS...`` to completion; returns exit code and output."""

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            autostep_command(*args),
            cwd=REPO_ROOT,
            env=process_env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )

    return run


@pytest.fixture
def project(cli: Cli) -> str:
    """A project created with ``autostep project create``."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    created = cli("project", "create", name, "--description", "e2e")
    assert created.returncode == 0, created.stderr
    uuid.UUID(created.stdout.strip())  # prints the new project's id
    return name
