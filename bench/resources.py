"""What a benchmark runs against: its own database, vhost and autostep processes.

:func:`bench_platform` creates ``autostep_bench_<random>`` as a PostgreSQL
database and a RabbitMQ vhost (``rabbitmqctl add_vhost``), migrates the
database, and on the way out (also on Ctrl-C or an error) stops the
processes it spawned and drops both. :class:`CpuMeter` reads ``/proc`` to
tell which process was busy while a benchmark ran, and how many milliseconds
of CPU each spent per step.

The bench's own database connections carry the application name
:data:`DRIVER_APPNAME` (``PGAPPNAME``, set by :func:`bench_platform`; the
autostep processes it spawns do not inherit it), so their backends count as
the load driver's, not as autostep's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg

from bench.report import say

__all__ = [
    "ROOT",
    "RUNNER_ARGS",
    "CpuMeter",
    "Platform",
    "amqp_vhost",
    "bench_platform",
    "cpu_per_step",
    "libpq",
    "quiet_imports",
    "rabbitmqctl",
    "rss_kib",
]

ROOT = Path(__file__).resolve().parent.parent
#: The function runner's command line: ``python -m autostep.cli RUNNER_ARGS``.
RUNNER_ARGS = ("functions", "run", "autostep.functions.builtins")
SERVER_DB = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SERVER_AMQP = os.environ.get("BENCH_AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
_TICKS = os.sysconf("SC_CLK_TCK")
#: ``application_name`` of the bench's own database connections (the load driver).
DRIVER_APPNAME = "autostep-bench-driver"
#: The groups whose CPU is autostep's cost of a step (the load driver and others left out).
ENGINE_GROUPS = ("pg bench db", "pg other", "rabbitmq")


def libpq(url: str) -> str:
    """A libpq connection string from a SQLAlchemy URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _with_path(url: str, path: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{path}"))


def rabbitmqctl(*args: str, check: bool = True) -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise SystemExit("bench: rabbitmqctl not found; run where it can manage vhosts")
    done = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Platform:
    """The bench database and vhost, and the processes running against them."""

    name: str
    database_url: str
    amqp_uri: str
    logs: Path
    #: The tree the autostep processes run from (``--code``): the repo or a patched copy.
    code: Path = ROOT
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {
            **{key: value for key, value in os.environ.items() if key != "PGAPPNAME"},
            "AUTOSTEP_DATABASE_URL": self.database_url,
            "AUTOSTEP_AMQP_URI": self.amqp_uri,
            "PYTHONUNBUFFERED": "1",
        }
        if self.code != ROOT:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(self.code), env.get("PYTHONPATH")])
            )
        return env

    def spawn(
        self,
        name: str,
        *args: str,
        program: str = sys.executable,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``program ARGS`` (the bench's Python by default) in :attr:`code`.

        Its output goes to ``<logs>/<name>.log``; ``env`` adds to :meth:`env`.
        """
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [program, *args],
                cwd=self.code,
                env={**self.env(), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops them in order
            )
        self.procs[name] = proc
        return proc

    def spawn_autostep(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """``python -m autostep.cli ARGS`` as a user would start it."""
        return self.spawn(name, "-m", "autostep.cli", *args)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # Its session's process group: the process and any children (a worker pool).
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def bench_platform(*, code: Path = ROOT, keep_logs: bool = False) -> Iterator[Platform]:
    """A fresh, migrated database and a fresh vhost; all removed on the way out."""
    name = f"autostep_bench_{uuid.uuid4().hex[:10]}"
    logs = Path(tempfile.mkdtemp(prefix=f"{name}_"))
    plat = Platform(name, _with_path(SERVER_DB, name), _with_path(SERVER_AMQP, name), logs, code)
    created_db = created_vhost = False
    try:
        with psycopg.connect(libpq(SERVER_DB), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        created_db = True
        rabbitmqctl("add_vhost", name)
        created_vhost = True
        user = urlparse(SERVER_AMQP).username or "guest"
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        os.environ["AUTOSTEP_DATABASE_URL"] = plat.database_url
        os.environ["AUTOSTEP_AMQP_URI"] = plat.amqp_uri
        os.environ["PGAPPNAME"] = DRIVER_APPNAME
        from autostep.migrate import upgrade

        upgrade(plat.database_url)
        yield plat
    finally:
        for proc_name in list(plat.procs)[::-1]:
            plat.stop(proc_name)
        if created_db:
            with psycopg.connect(libpq(SERVER_DB), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if created_vhost:
            rabbitmqctl("delete_vhost", name, check=False)
        if keep_logs:
            say(f"\nprocess logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)


@contextmanager
def amqp_vhost(name: str) -> Iterator[str]:
    """A fresh RabbitMQ vhost the AMQP user may use: its URI. Deleted on the way out."""
    rabbitmqctl("add_vhost", name)
    try:
        user = urlparse(SERVER_AMQP).username or "guest"
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield _with_path(SERVER_AMQP, name)
    finally:
        rabbitmqctl("delete_vhost", name, check=False)


def quiet_imports() -> None:
    """Import nameko and eventlet once with their deprecation notices silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import eventlet  # noqa: F401
        import nameko.standalone.rpc  # noqa: F401


# -- CPU accounting -------------------------------------------------------------


def _stat_of(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds user + system) of process ``pid``; (0, 0.0) if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0, 0.0


def rss_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak) of process ``pid`` in KiB, from ``/proc/PID/status``."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class CpuMeter:
    """Cores each process group kept busy between construction and :meth:`report`.

    Groups: the processes the bench spawned, by name (with their children,
    such as the pool of a prefork worker); PostgreSQL backends of
    the bench database; the rest of PostgreSQL (WAL writer, checkpointer,
    other databases); RabbitMQ (``beam.smp``); the bench itself (with the
    other processes it started, such as py-spy or a load driver); and every
    other process on the machine, which is other people's work when the
    machine is shared. ``machine`` is the whole machine, from ``/proc/stat``;
    what it has beyond the groups is kernel time (network, disk) no process
    was charged for.
    """

    def __init__(self, plat: Platform) -> None:
        self.plat = plat
        self.drivers: set[int] = set()
        self.start = self._sample()
        self.machine = _machine_ticks()
        self.t0 = time.perf_counter()

    def _group(self, pid: str, ours: dict[int, str]) -> str:
        if int(pid) in ours:
            return ours[int(pid)]
        if int(pid) in self.drivers:
            return "pg load driver"
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            return "others"
        if comm == "postgres":
            return "pg bench db" if self.plat.name in _cmdline(pid) else "pg other"
        if comm == "beam.smp":
            return "rabbitmq"
        return "others"

    def _sample(self) -> dict[str, tuple[str, float]]:
        ours = {proc.pid: name for name, proc in self.plat.procs.items()}
        ours[os.getpid()] = "bench"
        self.drivers |= _driver_backends(self.plat)
        sample = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                parent, cpu = _stat_of(int(pid))
                own = ours.get(int(pid), ours.get(parent))
                group = own if own is not None else self._group(pid, ours)
                sample[pid] = (group, cpu)
        return sample

    def report(self) -> dict[str, float]:
        """Print and return cores busy per group, plus ``machine``."""
        end, wall = self._sample(), time.perf_counter() - self.t0
        ticks = _machine_ticks()
        delta = {kind: ticks[kind] - self.machine[kind] for kind in ticks}
        shares: dict[str, float] = {name: 0.0 for name in self.plat.procs}
        shares.update({"pg bench db": 0.0, "pg other": 0.0, "rabbitmq": 0.0, "bench": 0.0})
        shares["pg load driver"] = 0.0
        shares["others"] = 0.0
        for pid, (group, cpu) in end.items():
            before = self.start.get(pid, (group, 0.0))[1]
            shares[group] = shares.get(group, 0.0) + (cpu - before) / wall
        cores = os.cpu_count() or 1
        machine = {kind: delta[kind] / max(1, delta["total"]) * cores for kind in delta}
        listed = "  ".join(f"{name} {share:.2f}" for name, share in shares.items())
        say(f"  cores busy over {wall:.1f}s: {listed}")
        say(
            f"    whole machine {machine['busy']:.2f} of {cores}: user {machine['user']:.2f},"
            f" system {machine['system']:.2f}, softirq {machine['softirq']:.2f},"
            f" steal {machine['steal']:.2f}"
        )
        if shares["others"] > 0.1:
            say("    NOTE: other processes were busy; the figures are pessimistic")
        shares["machine"] = machine["busy"]
        shares.update({f"machine {kind}": machine[kind] for kind in ("user", "system", "softirq")})
        shares["wall"] = wall
        return shares


def cpu_per_step(
    shares: dict[str, float],
    steps: int,
    spawned: list[str],
    servers: tuple[str, ...] = ENGINE_GROUPS,
) -> dict[str, float]:
    """Milliseconds of CPU per step by group, from :meth:`CpuMeter.report`, and printed.

    ``spawned`` names the autostep processes (runners, relays). ``total`` is
    theirs plus the ``servers``' (PostgreSQL's and RabbitMQ's unless told
    otherwise): the load driver (the bench and its database backends) and
    other people's processes are left out.
    ``softirq`` is the machine's network and disk interrupt time, charged to
    no process, over the same span (it includes the load driver's share).
    """
    seconds = shares["wall"]
    cores = os.cpu_count() or 1
    groups = [*spawned, *servers]
    ms = {name: shares.get(name, 0.0) * seconds * 1000 / max(1, steps) for name in groups}
    ms["total"] = sum(ms.values())
    ms["softirq"] = shares["machine softirq"] * seconds * 1000 / max(1, steps)
    ms["load driver"] = (
        (shares["bench"] + shares["pg load driver"]) * seconds * 1000 / max(1, steps)
    )
    listed = "  ".join(f"{name} {ms[name]:.2f}" for name in [*groups, "total"])
    say(f"  CPU ms per step: {listed}")
    say(
        f"    beside it: softirq {ms['softirq']:.2f} (no process; {cores} cores),"
        f" load driver {ms['load driver']:.2f} (left out)"
    )
    return ms


def _driver_backends(plat: Platform) -> set[int]:
    """Backend pids of the bench's own connections to the bench database."""
    try:
        with psycopg.connect(libpq(plat.database_url), autocommit=True) as db:
            rows = db.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (DRIVER_APPNAME,),
            ).fetchall()
    except psycopg.Error:
        return set()
    return {int(pid) for (pid,) in rows}


def _machine_ticks() -> dict[str, int]:
    """Jiffies of all CPUs since boot by kind, from the first line of ``/proc/stat``."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(v) for v in f.readline().split()[1:9]
        )
    ticks = {"user": user + nice, "system": system + irq, "softirq": softirq, "steal": steal}
    ticks["busy"] = sum(ticks.values())
    ticks["total"] = ticks["busy"] + idle + iowait
    return ticks
