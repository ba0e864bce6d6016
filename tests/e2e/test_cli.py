"""The ``autostep`` command line as a user runs it, against a running platform.

A project is created, a YAML workflow (the built-in ``fibo`` and a CEL
condition choosing between two branches) is published, and runs are started
and followed while ``autostep relay`` and ``autostep functions run`` serve
them. Mistakes a user makes (input that is not JSON, a broken condition, a
missing file, an unknown workflow) exit non-zero naming what is wrong and
change nothing.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from autostep.db import unit_of_work
from autostep.models import Job, Workflow
from tests.e2e.conftest import Cli, ManagedProcess

pytestmark = pytest.mark.e2e

FIBO_WORKFLOW = """\
name: fib
description: fibo(n), then fibo(n + 1) when the value is big, fibo(n - 1) otherwise
steps:
  - name: compute
    function: fibo
    next:
      - to: big
        when: "output.value > 50"
      - to: small
  - name: big
    function: fibo
    input:
      n: "prev.n + 1"
  - name: small
    function: fibo
    input:
      n: "prev.n - 1"
"""

BROKEN_CONDITION_WORKFLOW = """\
name: broken
steps:
  - name: compute
    function: fibo
    next:
      - to: done
        when: "output.value >"
  - name: done
    function: noop
"""


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


def _publish(cli: Cli, project: str, path: Path) -> None:
    published = cli("workflow", "publish", project, str(path))
    assert published.returncode == 0, published.stderr


def _count(session_factory: Any, statement: Any) -> int:
    with unit_of_work(session_factory) as session:
        return int(session.scalar(statement) or 0)


def test_publish_start_follow_and_status_of_a_branching_workflow(
    cli: Cli,
    project: str,
    tmp_path: Path,
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
) -> None:
    path = _write(tmp_path, "fib.yaml", FIBO_WORKFLOW)
    published = cli("workflow", "publish", project, str(path))
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("published fib version 1 ")

    # fibo(10) = 55 > 50: the condition takes the `big` branch, fibo(11) = 89
    followed = cli("run", "start", project, "fib", "--input", '{"n": 10}', "--follow")

    assert followed.returncode == 0, followed.stdout + followed.stderr
    lines = followed.stdout.splitlines()
    job_id = str(uuid.UUID(lines[0]))
    last_frame = lines[lines.index(f"job {job_id}  succeeded") :]
    assert last_frame == [
        f"job {job_id}  succeeded",
        "  ✔ compute succeeded",
        "  ✔ big succeeded",
        'output: {"n": 11, "value": 89}',
    ]

    status = cli("run", "status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    view = json.loads(status.stdout)
    assert view["id"] == job_id
    assert view["status"] == "succeeded"
    assert view["trigger"] == "cli"
    assert view["input"] == {"n": 10}
    assert view["output"] == {"n": 11, "value": 89}
    assert [(p["step"], p["status"]) for p in view["processes"]] == [
        ("compute", "succeeded"),
        ("big", "succeeded"),
    ]
    assert view["processes"][0]["output"] == {"n": 10, "value": 55}

    # fibo(5) = 5: the otherwise branch, fibo(4) = 3; started, then followed by status
    started = cli("run", "start", project, "fib", "--input", '{"n": 5}')
    assert started.returncode == 0, started.stderr
    other_id = started.stdout.strip()
    status_followed = cli("run", "status", other_id, "--follow")
    assert status_followed.returncode == 0, status_followed.stdout + status_followed.stderr
    assert "  ✔ small succeeded" in status_followed.stdout
    assert "big" not in status_followed.stdout
    assert status_followed.stdout.rstrip().endswith('output: {"n": 4, "value": 3}')


def test_a_failing_run_exits_non_zero_and_shows_the_error(
    cli: Cli,
    project: str,
    tmp_path: Path,
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
) -> None:
    _publish(cli, project, _write(tmp_path, "fib.yaml", FIBO_WORKFLOW))
    # fibo accepts n <= 30: the input fails validation, a permanent error
    followed = cli("run", "start", project, "fib", "--input", '{"n": 99}', "--follow")

    assert followed.returncode == 1, followed.stdout + followed.stderr
    assert "✘ compute failed" in followed.stdout
    assert "error: step 'compute' failed: PermanentError: input of 'fibo' is invalid" in (
        followed.stdout
    )
    job_id = followed.stdout.splitlines()[0]
    status = cli("run", "status", job_id, "--json")
    assert status.returncode == 1
    assert json.loads(status.stdout)["status"] == "failed"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("not json", "autostep: error: --input: not JSON: line 1, column 1: Expecting value\n"),
        ("[1, 2]", "autostep: error: --input: must be a JSON object, not an array\n"),
    ],
)
def test_input_that_is_not_a_json_object_is_rejected_before_a_run_starts(
    cli: Cli, project: str, tmp_path: Path, session_factory: Any, value: str, complaint: str
) -> None:
    _publish(cli, project, _write(tmp_path, "fib.yaml", FIBO_WORKFLOW))
    jobs_before = _count(session_factory, select(func.count()).select_from(Job))

    started = cli("run", "start", project, "fib", "--input", value)

    assert started.returncode == 2
    assert started.stderr == complaint
    assert "Traceback" not in started.stderr
    assert started.stdout == ""
    assert _count(session_factory, select(func.count()).select_from(Job)) == jobs_before


def test_a_broken_condition_is_rejected_naming_the_field(
    cli: Cli, project: str, tmp_path: Path, session_factory: Any
) -> None:
    path = _write(tmp_path, "broken.yaml", BROKEN_CONDITION_WORKFLOW)

    published = cli("workflow", "publish", project, str(path))

    assert published.returncode != 0
    assert "autostep: error: steps[0].next[0].when:" in published.stderr
    assert "Traceback" not in published.stderr
    stored = select(func.count()).select_from(Workflow).where(Workflow.name == "broken")
    assert _count(session_factory, stored) == 0


def test_a_missing_definition_file_is_named(cli: Cli, project: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"

    published = cli("workflow", "publish", project, str(missing))

    assert published.returncode != 0
    assert f"FILE {missing}" in published.stderr
    assert "No such file or directory" in published.stderr
    assert "Traceback" not in published.stderr


def test_an_unknown_workflow_is_named(cli: Cli, project: str) -> None:
    started = cli("run", "start", project, "nonexistent", "--input", "{}")

    assert started.returncode == 1
    assert "autostep: error: no workflow 'nonexistent'" in started.stderr
    assert "Traceback" not in started.stderr


def test_input_is_read_from_a_file_or_from_stdin(
    cli: Cli, project: str, tmp_path: Path, session_factory: Any
) -> None:
    _publish(cli, project, _write(tmp_path, "fib.yaml", FIBO_WORKFLOW))
    _write(tmp_path, "input.json", '{"n": 7, "from": "file"}')

    from_file = cli("run", "start", project, "fib", "--input", f"@{tmp_path / 'input.json'}")
    from_stdin = cli("run", "start", project, "fib", "--input", "-", stdin='{"n": 8}')
    missing = cli("run", "start", project, "fib", "--input", f"@{tmp_path / 'nope.json'}")
    not_an_object = cli("run", "start", project, "fib", "--input", "-", stdin='"n"')

    assert from_file.returncode == 0, from_file.stderr
    assert from_stdin.returncode == 0, from_stdin.stderr
    with unit_of_work(session_factory) as session:
        inputs = [
            session.get(Job, uuid.UUID(started.stdout.strip())).input  # type: ignore[union-attr]
            for started in (from_file, from_stdin)
        ]
    assert inputs == [{"n": 7, "from": "file"}, {"n": 8}]
    assert (missing.returncode, missing.stderr) == (
        2,
        f"autostep: error: --input @{tmp_path / 'nope.json'}: No such file or directory\n",
    )
    assert (not_an_object.returncode, not_an_object.stderr) == (
        2,
        "autostep: error: --input -: must be a JSON object, not a string\n",
    )


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        (
            "wf.yaml",
            b"name: x\nsteps:\n  - name: a\n    function: b: c\n",
            "line 4, column 16: mapping values are not allowed here",
        ),
        ("wf.json", b'{"name": "x",\n "steps": [}', "line 2, column 12: Expecting value"),
        ("wf.yaml", b"name: x\nsteps: \xff\xfe\x00", "line 2, column 8: not UTF-8 text"),
        (
            "wf.yaml",
            b"name: x\0",
            "line 1, column 8: unacceptable character #x0000: special characters are not allowed",
        ),
        ("wf.yaml", b"- a\n- b\n", "a definition is a mapping"),
    ],
)
def test_a_broken_definition_file_is_named_in_one_line_with_the_spot(
    cli: Cli, tmp_path: Path, name: str, content: bytes, complaint: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    published = cli("workflow", "publish", "any-project", str(path))

    assert published.returncode == 2
    assert published.stderr == f"autostep: error: FILE {path}: {complaint}\n"


def test_a_bad_project_name_is_refused_naming_the_field_without_sql(cli: Cli) -> None:
    too_long = cli("project", "create", "p" * 201)
    empty = cli("project", "create", "")

    assert (too_long.returncode, too_long.stderr) == (
        2,
        "autostep: error: name: String should have at most 100 characters\n",
    )
    assert (empty.returncode, empty.stderr) == (
        2,
        "autostep: error: name: String should have at least 1 character\n",
    )
