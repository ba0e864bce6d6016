"""Private PostgreSQL and RabbitMQ servers that a test may stop, crash and restart.

The shared servers every other test uses must never be disturbed, so a test
that takes a server away starts its own: :class:`PrivatePostgres` (``initdb``
and ``pg_ctl`` on a free port, in a temporary directory) and
:class:`PrivateRabbit` (a RabbitMQ node of its own, ``autostep-test-<hex>``,
with its own port, distribution port, data, logs, configuration and
plugins). Both listen on 127.0.0.1 only. Run as root (CI), each server runs
as its system user (``postgres``, ``rabbitmq``), since ``initdb`` refuses
root. :meth:`close` stops the server, whatever state it is in, and removes
its directory; the fixtures in ``tests/e2e/conftest.py`` call it at teardown.

Without the binaries (``initdb``, ``pg_ctl``, ``rabbitmq-server``,
``rabbitmqctl``) :func:`missing_binaries` names what is missing, and the
fixtures skip (fail in CI) with that reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import amqp
import psycopg

from autostep.settings import amqp_params

__all__ = ["PrivatePostgres", "PrivateRabbit", "free_port", "missing_binaries"]

#: Seconds a server may take to start (RabbitMQ boots in about 5 s), and to stop.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
POSTGRES_BINARIES = ("initdb", "pg_ctl")
RABBITMQ_BINARIES = ("rabbitmq-server", "rabbitmqctl")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def missing_binaries(names: tuple[str, ...]) -> list[str]:
    return [name for name in names if shutil.which(name) is None]


def _as_user(user: str) -> list[str]:
    """The command prefix that runs a server as ``user`` (only needed as root)."""
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


def _private_dir(prefix: str, user: str) -> Path:
    """A temporary directory that ``user`` owns (when we are root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(path, user, user)
    return path


def _run(command: list[str], what: str, timeout: float = START_TIMEOUT) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return done.stdout


class PrivatePostgres:
    """A PostgreSQL server of one test: ``stop`` is an immediate shutdown (a crash)."""

    user = "postgres"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = _private_dir("autostep-pg-", self.user)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.starts = 0
        try:
            self._initdb()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _initdb(self) -> None:
        _run(
            [
                *_as_user(self.user),
                "initdb",
                "--pgdata",
                str(self.data),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-sync",
            ],
            "initdb",
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (recovering after a crash) and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
            # a crash of the server process loses nothing the OS has; no disk flushes
            " -c fsync=off -c full_page_writes=off"
        )
        command = [*_as_user(self.user), "pg_ctl", "--pgdata", str(self.data)]
        _run([*command, "--log", str(self.log), "--wait", "--options", options, "start"], "pg_ctl")
        self.starts += 1

    def stop(self) -> None:
        """Immediate shutdown: every backend is killed, as in a crash; recovery at next start."""
        command = [*_as_user(self.user), "pg_ctl", "--pgdata", str(self.data)]
        _run([*command, "--mode", "immediate", "--wait", "stop"], "pg_ctl stop", STOP_TIMEOUT)

    def is_running(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        """Create database ``name``; its SQLAlchemy URL."""
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        """Stop the server if it runs, and remove its directory."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            try:
                self.stop()
            except (RuntimeError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRabbit:
    """A RabbitMQ node of one test: ``crash`` kills it with SIGKILL, ``start`` boots it again.

    The node keeps its data directory across restarts, so durable queues and
    persistent messages survive a crash as they would in production.
    """

    user = "rabbitmq"

    def __init__(self) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"autostep-test-{uuid.uuid4().hex[:8]}@localhost"
        self.dir = _private_dir("autostep-rabbit-", self.user)
        self.pid_file = self.dir / "beam.pid"
        self.output = self.dir / "server.out"
        self.starts = 0
        self.crashes = 0
        self._server: subprocess.Popen[bytes] | None = None
        config = self.dir / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        # The system's rabbitmq-env.conf names the system node; ours replaces it.
        env_file = self.dir / "rabbitmq-env.conf"
        env_file.write_text(
            "ERL_EPMD_ADDRESS=127.0.0.1\n"
            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n'
        )
        plugins = self.dir / "enabled_plugins"
        plugins.write_text("[].\n")
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir()
        if os.geteuid() == 0:
            for path in self.dir.iterdir():
                shutil.chown(path, self.user, self.user)
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_CONF_ENV_FILE": str(env_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        }

    @property
    def uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Boot the node (on its data directory) and wait until it accepts AMQP connections."""
        if self._server is not None and self._server.poll() is None:
            raise RuntimeError(f"{self.node} is already running")
        self.pid_file.unlink(missing_ok=True)
        with self.output.open("ab") as output:
            self._server = subprocess.Popen(
                ["rabbitmq-server"],
                env=self.env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one at teardown
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._accepts_amqp():
            if self._server.poll() is not None or time.monotonic() > deadline:
                tail = self.output.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.node} did not start:\n{tail}")
            time.sleep(0.2)
        _run(["rabbitmqctl", "-n", self.node, "await_startup"], "rabbitmqctl await_startup")
        self.starts += 1

    def crash(self) -> None:
        """SIGKILL the node's Erlang VM: no goodbye to its clients, no clean shutdown."""
        os.kill(self.beam_pid(), signal.SIGKILL)
        assert self._server is not None
        self._server.wait(STOP_TIMEOUT)
        self.crashes += 1

    def beam_pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def _accepts_amqp(self) -> bool:
        try:
            probe = amqp.Connection(**amqp_params(self.uri, timeout=2))
            probe.connect()
            probe.close()
            return True
        except (OSError, amqp.exceptions.AMQPError):
            return False

    def close(self) -> None:
        """Kill the node and the script that started it, if they run; remove its directory."""
        if self._server is not None and self._server.poll() is None:
            # su gives the node a session of its own: kill it by its pid, then the script
            with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
                os.kill(self.beam_pid(), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._server.pid, signal.SIGKILL)
            self._server.wait(STOP_TIMEOUT)
        shutil.rmtree(self.dir, ignore_errors=True)
