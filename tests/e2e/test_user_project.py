"""A user's own project, with its own ``functions`` package, runs on autostep.

User code imports only ``autostep``; autostep's runners are
``autostep.functions``, so a project that names its package ``functions`` (a
common name) serves it with ``autostep functions run functions.orders`` from
its own directory, and a run of a workflow over it succeeds.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autostep.catalog import create_project, publish_workflow
from autostep.db import unit_of_work
from autostep.queries import wait_for_job
from autostep.runs import start_job
from tests.e2e.conftest import ManagedProcess, runner_connected

pytestmark = pytest.mark.e2e

ORDERS = '''\
"""The user's step functions: nothing here imports anything of autostep but `autostep`."""

from pydantic import BaseModel

from autostep import PermanentError, StepContext, function, services_for


class Order(BaseModel):
    order_id: int
    cents: int


class Charge(BaseModel):
    order_id: int
    charged: int
    attempt: int


@function(name="user_charge", retries=0)
def charge(inp: Order, ctx: StepContext) -> Charge:
    if inp.cents <= 0:
        raise PermanentError("nothing to charge")
    return Charge(order_id=inp.order_id, charged=inp.cents * 2, attempt=ctx.attempt)


globals().update(services_for(__name__))
'''


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A project directory with a package named ``functions`` of its own."""
    root = tmp_path / "shop"
    package = root / "functions"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""The shop\'s own functions."""\n')
    (package / "orders.py").write_text(textwrap.dedent(ORDERS))
    return root


def test_a_project_with_its_own_functions_package_serves_and_runs_it(
    user_project: Path,
    autostep_process: Callable[..., ManagedProcess],
    relay_process: ManagedProcess,
    session_factory: Any,
) -> None:
    runner = autostep_process(
        "shop-runner",
        "functions",
        "run",
        "functions.orders",
        cwd=user_project,
        ready=runner_connected,
    )
    assert "fn_user_charge" in runner.output()

    project = f"shop-{uuid.uuid4().hex[:8]}"
    definition = {"name": "checkout", "steps": [{"name": "charge", "function": "user_charge"}]}
    with unit_of_work(session_factory) as session:
        create_project(session, project)
        publish_workflow(session, project, definition)
        job = start_job(session, project, "checkout", {"order_id": 7, "cents": 150})

    view = wait_for_job(session_factory, job.id, timeout=60)

    assert view["status"] == "succeeded", view
    assert view["output"] == {"order_id": 7, "charged": 300, "attempt": 1}


def test_nameko_run_serves_the_project_with_the_environment_alone(
    user_project: Path,
    process_env: dict[str, str],
    relay_process: ManagedProcess,
    session_factory: Any,
    tmp_path: Path,
) -> None:
    """``nameko run`` with no config file reads ``AMQP_URI`` and ``DATABASE_URL``."""
    env = {key: value for key, value in process_env.items() if not key.startswith("AUTOSTEP_")}
    env.update(
        AMQP_URI=process_env["AUTOSTEP_AMQP_URI"],
        DATABASE_URL=process_env["AUTOSTEP_DATABASE_URL"],
    )
    nameko = str(Path(sys.executable).with_name("nameko"))
    runner = ManagedProcess(
        "nameko-run",
        [nameko, "run", "functions.orders"],
        env,
        tmp_path / "nameko-run.log",
        runner_connected,
        user_project,
    )
    try:
        runner.start()
        project = f"shop-{uuid.uuid4().hex[:8]}"
        definition = {"name": "checkout", "steps": [{"name": "charge", "function": "user_charge"}]}
        with unit_of_work(session_factory) as session:
            create_project(session, project)
            publish_workflow(session, project, definition)
            job = start_job(session, project, "checkout", {"order_id": 8, "cents": 5})
        view = wait_for_job(session_factory, job.id, timeout=60)
    finally:
        runner.close()
    assert view["status"] == "succeeded", runner.tail()
    assert view["output"] == {"order_id": 8, "charged": 10, "attempt": 1}
