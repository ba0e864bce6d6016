"""The function registry as a user meets it: ``autostep functions run`` and the CLI.

A runner started as a user starts it registers what it serves; publishing a
step whose function nobody serves warns (and still publishes); a run of it
says what it waits for in ``autostep run status``, ``--follow`` included,
instead of waiting in silence; ``autostep functions list`` shows the
runners. A runner stopped with SIGTERM removes its rows; one killed with
SIGKILL leaves them, and once they are older than the grace its steps read
"no live runner … (last seen …)".
"""

from __future__ import annotations

import importlib
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from autostep.db import unit_of_work
from autostep.models import FunctionRunner
from autostep.sdk import REGISTRY
from tests.e2e.conftest import (
    CLI_TIMEOUT,
    READY_TIMEOUT,
    REPO_ROOT,
    RUNNER_MODULES,
    Cli,
    ManagedProcess,
    autostep_command,
)

pytestmark = pytest.mark.e2e

SHIP_WORKFLOW = """\
name: ship
steps:
  - name: compute
    function: fibo
    next:
      - to: ship
  - name: ship
    function: shipp
"""

UNSERVED_FIRST = """\
name: unserved
steps:
  - name: ship
    function: shipp
"""

#: Every function the runner serves (its modules are imported here too).
SERVED = {
    spec.name
    for module in map(importlib.import_module, RUNNER_MODULES)
    for spec in list(REGISTRY.values())
    if spec.func.__module__ == module.__name__
}


def _publish(cli: Cli, project: str, tmp_path: Path, content: str) -> Any:
    path = tmp_path / f"{uuid.uuid4().hex}.yaml"
    path.write_text(content)
    return cli("workflow", "publish", project, str(path))


def _rows_of(session_factory: Any, process: ManagedProcess) -> set[str]:
    """The functions registered by ``process`` (its runner id is host:pid:random)."""
    with unit_of_work(session_factory) as session:
        rows = session.scalars(
            select(FunctionRunner.function).where(FunctionRunner.runner.like(f"%:{process.pid}:%"))
        )
        return set(rows)


def _registered(session_factory: Any, process: ManagedProcess, functions: set[str]) -> set[str]:
    """The functions ``process`` registered, once ``functions`` are among them.

    A runner connects to RabbitMQ and registers in parallel as it starts.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    while not functions <= (rows := _rows_of(session_factory, process)):
        if time.monotonic() > deadline:
            return rows
        time.sleep(0.05)
    return rows


def _first_frame_of_follow(process_env: dict[str, str], job_id: str, lines: int) -> list[str]:
    """The first ``lines`` lines ``run status --follow`` prints; then it is stopped."""
    follow = subprocess.Popen(
        autostep_command("run", "status", job_id, "--follow"),
        cwd=REPO_ROOT,
        env=process_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    silent = threading.Timer(CLI_TIMEOUT, follow.kill)  # prints nothing: end it, fail
    silent.start()
    try:
        assert follow.stdout is not None
        return [follow.stdout.readline().rstrip("\n") for _ in range(lines)]
    finally:
        silent.cancel()
        follow.terminate()
        follow.wait(CLI_TIMEOUT)


def test_publish_warns_run_status_says_what_waits_and_a_clean_stop_unregisters(
    cli: Cli,
    project: str,
    tmp_path: Path,
    process_env: dict[str, str],
    session_factory: Any,
    runner_process: ManagedProcess,
) -> None:
    registered = _registered(session_factory, runner_process, SERVED)
    published = _publish(cli, project, tmp_path, SHIP_WORKFLOW)
    listed = cli("functions", "list")
    _publish(cli, project, tmp_path, UNSERVED_FIRST)
    job_id = cli("run", "start", project, "unserved").stdout.strip()
    status = cli("run", "status", job_id)
    followed = _first_frame_of_follow(process_env, job_id, lines=2)

    assert registered == SERVED
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("published ship version 1 ")
    [warning] = published.stderr.splitlines()
    prefix = "warning: steps[1] (ship): no runner serves function 'shipp'; served: "
    assert warning.startswith(prefix)
    assert registered <= set(warning.removeprefix(prefix).split(", "))
    assert listed.returncode == 0, listed.stderr
    [fibo] = [line.split() for line in listed.stdout.splitlines() if line.startswith("fibo ")]
    assert fibo[1] == "autostep.functions.builtins"
    assert int(fibo[2]) >= 1  # this runner (runners killed by earlier tests may still count)
    assert status.returncode == 0, status.stderr
    assert "  · ship queued  waiting: no runner serves 'shipp'" in status.stdout.splitlines()
    assert followed == [
        f"job {job_id}  running",
        "  · ship queued  waiting: no runner serves 'shipp'",
    ]

    assert runner_process.terminate() == 0
    assert _rows_of(session_factory, runner_process) == set()


def test_a_killed_runner_leaves_steps_waiting_for_a_live_runner_after_the_grace(
    cli: Cli,
    project: str,
    tmp_path: Path,
    session_factory: Any,
    runner_process: ManagedProcess,
) -> None:
    assert "fibo" in _registered(session_factory, runner_process, {"fibo"})
    assert _publish(cli, project, tmp_path, SHIP_WORKFLOW).returncode == 0
    runner_process.kill()
    assert "fibo" in _rows_of(session_factory, runner_process)  # no chance to clean up
    # Every runner of fibo last beat 40 s ago: past the 30 s grace.
    with unit_of_work(session_factory) as session:
        session.execute(
            update(FunctionRunner)
            .where(FunctionRunner.function == "fibo")
            .values(heartbeat_at=text("now() - interval '40 seconds'"))
        )

    job_id = cli("run", "start", project, "ship", "--input", '{"n": 3}').stdout.strip()
    status = cli("run", "status", job_id)

    assert status.returncode == 0, status.stderr
    [compute] = [line for line in status.stdout.splitlines() if "compute" in line]
    assert compute.startswith("  · compute queued  waiting: no live runner for 'fibo' (last seen")
    assert compute.endswith(" s ago)")
