"""Job control from the command line: list, cancel and rerun, as a user runs them.

A run that fails at a closed gate is listed, rerun once the gate is open
(its first step is reused, not run again), and a slow run is cancelled;
cancelling a finished run leaves it as it was.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from autostep.db import unit_of_work
from tests.e2e.conftest import Cli, ManagedProcess

pytestmark = pytest.mark.e2e

GATED_WORKFLOW = """\
name: gated
steps:
  - name: first
    function: fibo
    next: [{to: gate}]
  - name: gate
    function: t_gated
    input: {gate: "input.gate", value: "prev.value"}
"""

SLOW_WORKFLOW = """\
name: slow
steps:
  - name: nap
    function: t_item
    config: {sleep: 8}
"""


def _publish(cli: Cli, project: str, tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(content)
    published = cli("workflow", "publish", project, str(path))
    assert published.returncode == 0, published.stderr


def test_list_rerun_and_cancel_runs(
    cli: Cli,
    project: str,
    tmp_path: Path,
    session_factory: Any,
    effect_table: None,
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
) -> None:
    _publish(cli, project, tmp_path, "gated", GATED_WORKFLOW)
    gate = f"cli-{uuid.uuid4().hex[:8]}"

    failed = cli(
        "run", "start", project, "gated", "--input", f'{{"n": 7, "gate": "{gate}"}}', "--follow"
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    job_id = failed.stdout.splitlines()[0]
    assert f"gate {gate} is closed" in failed.stdout

    listed = cli("run", "list", "--project", project, "--workflow", "gated")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["RUN", "WORKFLOW", "STATUS", "TRIGGER", "CREATED"]
    assert row.split()[:4] == [job_id, "gated", "failed", "cli"]
    assert project in cli("project", "list").stdout
    workflows = cli("workflow", "list", project).stdout.splitlines()
    assert workflows[1].split()[:2] == ["gated", "1"]

    with unit_of_work(session_factory) as session:
        session.execute(text("INSERT INTO test_gate (name) VALUES (:n)"), {"n": gate})
    rerun = cli("run", "rerun", job_id, "--follow")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    lines = rerun.stdout.splitlines()
    rerun_id = lines[0]
    final = lines[lines.index(f"job {rerun_id}  succeeded  (rerun of {job_id})") :]
    assert final == [
        f"job {rerun_id}  succeeded  (rerun of {job_id})",
        "  ✔ first succeeded (reused)",
        "  ✔ gate succeeded",
        'output: {"value": 13}',
    ]
    again = cli("run", "rerun", rerun_id)
    assert again.returncode == 1
    assert (
        again.stderr.strip()
        == f"autostep: error: job {rerun_id} succeeded: there is nothing to rerun"
    )

    finished = cli("run", "cancel", rerun_id)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == f"job {rerun_id}  succeeded"

    _publish(cli, project, tmp_path, "slow", SLOW_WORKFLOW)
    started = cli("run", "start", project, "slow")
    assert started.returncode == 0, started.stderr
    slow_id = started.stdout.strip()
    cancelled = cli("run", "cancel", slow_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"job {slow_id}  cancelled"
    status = cli("run", "status", slow_id)
    assert status.returncode == 1
    assert status.stdout.splitlines()[:2] == [f"job {slow_id}  cancelled", "  ⊘ nap cancelled"]
    assert status.stdout.rstrip().endswith("error: cancelled")
