"""``autostep health``, the workers' liveness probe, against real processes.

A running relay, function runner and gateway RPC process each keep their
heartbeat file fresh, so ``autostep health <component>`` exits 0; once the
process is frozen (SIGSTOP: its loop no longer turns, as when it hangs) the
file ages and the probe exits 1 after ``--max-age``, naming the component.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    READY_TIMEOUT,
    RUNNER_MODULES,
    ManagedProcess,
    autostep_command,
    relay_holds_membership,
    runner_connected,
)

pytestmark = pytest.mark.e2e

#: A heartbeat older than this fails the probe (the processes beat every 0.5 s here).
MAX_AGE = 3.0
FAST_BEATS = {"AUTOSTEP_HEALTH_BEAT_SECONDS": "0.5", "AUTOSTEP_REGISTRY_HEARTBEAT_SECONDS": "0.5"}


def probe(directory: Path, component: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        autostep_command("health", component, "--max-age", str(MAX_AGE)),
        env={**os.environ, "AUTOSTEP_HEALTH_DIR": str(directory)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def probe_until(directory: Path, component: str, code: int) -> subprocess.CompletedProcess[str]:
    """Run the probe until it exits with ``code`` (or the time is up); its last answer."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        answer = probe(directory, component)
        if answer.returncode == code or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def stopped_fails_probe(process: ManagedProcess, directory: Path, component: str) -> None:
    fresh = probe_until(directory, component, 0)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.startswith(f"ok: {component} beat "), fresh.stdout
    assert process.pid is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        stale = probe_until(directory, component, 1)
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert stale.returncode == 1, stale.stdout
    assert stale.stderr.startswith(f"unhealthy: {component} beat "), stale.stderr
    assert f"(max {MAX_AGE:g} s" in stale.stderr


@pytest.mark.parametrize("component", ["relay", "functions", "gateway-rpc", "scheduler"])
def test_running_worker_passes_and_a_frozen_one_fails(
    component: str,
    autostep_process: Callable[..., ManagedProcess],
    database_url: str,
    effect_table: None,
    tmp_path: Path,
) -> None:
    directory = tmp_path / "health"
    assert probe(directory, component).returncode == 1  # nothing beat yet
    env = {**FAST_BEATS, "AUTOSTEP_HEALTH_DIR": str(directory)}
    if component == "relay":
        process = autostep_process(
            "relay", "relay", env=env, ready=relay_holds_membership(database_url)
        )
    elif component == "functions":
        process = autostep_process(
            "runner", "functions", "run", *RUNNER_MODULES, env=env, ready=runner_connected
        )
    elif component == "scheduler":  # local mode: its loop turns at least once a second
        process = autostep_process(
            "scheduler",
            "scheduler",
            "run",
            env={**env, "AUTOSTEP_SCHEDULER_BACKEND": "local"},
            ready=lambda process: "started" in process.output(),
        )
    else:
        process = autostep_process("rpc", "gateway", "rpc", env=env, ready=runner_connected)
    stopped_fails_probe(process, directory, component)


def test_without_any_heartbeat_the_probe_fails_naming_the_directory(tmp_path: Path) -> None:
    answer = probe(tmp_path / "nothing", "relay")
    assert answer.returncode == 1
    assert answer.stderr.strip() == (
        f"unhealthy: relay never beat (max {MAX_AGE:g} s, in {tmp_path / 'nothing'})"
    )
