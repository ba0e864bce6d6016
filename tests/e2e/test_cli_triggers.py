"""Triggers from the command line, as a user and a Kubernetes CronJob's pod run them.

A cron trigger is created with ``autostep trigger create``; ``autostep fire``
run twice with the same ``AUTOSTEP_JOB_NAME`` (a doubled Job, a restarted
pod) starts exactly one run; a bad schedule is refused in one line naming
the field, with exit code 2, and nothing is stored.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from autostep.db import unit_of_work
from autostep.models import Job, Trigger
from tests.e2e.conftest import REPO_ROOT, Cli, autostep_command

pytestmark = pytest.mark.e2e

WORKFLOW = "name: nightly\nsteps:\n  - name: a\n    function: t_noop\n"


@pytest.fixture
def workflow(cli: Cli, project: str, tmp_path: Path) -> str:
    path = tmp_path / "nightly.yaml"
    path.write_text(WORKFLOW)
    published = cli("workflow", "publish", project, str(path))
    assert published.returncode == 0, published.stderr
    return "nightly"


def fire(process_env: dict[str, str], trigger_id: str, job_name: str) -> Any:
    return subprocess.run(
        autostep_command("fire", "--trigger", trigger_id),
        cwd=REPO_ROOT,
        env={**process_env, "AUTOSTEP_JOB_NAME": job_name},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fire_twice_for_one_kubernetes_job_starts_one_run(
    cli: Cli, project: str, workflow: str, process_env: dict[str, str], session_factory: Any
) -> None:
    created = cli(
        "trigger", "create", "--project", project, "--workflow", workflow, "--name", "every-minute",
        "--kind", "cron", "--schedule", "* * * * *", "--time-zone", "Europe/Berlin",
        "--concurrency", "forbid", "--input-template", '{"at": scheduled_time}',
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    trigger_id = created.stdout.strip()
    # the CronJob controller names the Job after its tick: minutes since the epoch
    minutes = int(time.time() // 60) + 1
    job_name = f"autostep-every-minute-{uuid.uuid4().hex[:5]}-{minutes}"

    first = fire(process_env, trigger_id, job_name)
    second = fire(process_env, trigger_id, job_name)

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "started, job" in first.stdout and "already fired" in second.stdout
    assert len(second.stdout.strip().splitlines()) == 1
    with unit_of_work(session_factory) as session:
        jobs = list(session.scalars(select(Job).where(Job.trigger_id == uuid.UUID(trigger_id))))
    assert len(jobs) == 1 and jobs[0].trigger == "cron"
    assert jobs[0].input == {"at": time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(minutes * 60))}
    shown = cli("trigger", "show", trigger_id)
    assert shown.returncode == 0 and "tick" in shown.stdout and str(jobs[0].id) in shown.stdout

    disabled = cli("trigger", "disable", trigger_id)
    assert disabled.returncode == 0, disabled.stderr
    later = fire(process_env, trigger_id, f"autostep-every-minute-{minutes + 1}")
    assert later.returncode == 0 and "disabled" in later.stdout


def test_a_bad_schedule_is_one_line_naming_the_field_and_stores_nothing(
    cli: Cli, project: str, workflow: str, session_factory: Any
) -> None:
    with unit_of_work(session_factory) as session:
        before = session.scalar(select(func.count()).select_from(Trigger))
    refused = cli(
        "trigger", "create", "--project", project, "--workflow", workflow, "--name", "bad",
        "--kind", "cron", "--schedule", "0 0 L * *",
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "config.schedule" in refused.stderr
    assert "Traceback" not in refused.stderr
    with unit_of_work(session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Trigger)) == before


def test_a_webhook_token_is_printed_once_with_a_curl_example(
    cli: Cli, project: str, workflow: str
) -> None:
    created = cli(
        "trigger", "create", "--project", project, "--workflow", workflow, "--name", "hook",
        "--kind", "webhook",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    trigger_id, token_line, *rest = created.stdout.strip().splitlines()
    token = token_line.removeprefix("token: ")
    assert f"/hooks/{trigger_id}" in rest[-1] and token in rest[-1]
    listed = cli("trigger", "list", "--project", project, "--json")
    assert listed.returncode == 0 and token not in listed.stdout and trigger_id in listed.stdout
