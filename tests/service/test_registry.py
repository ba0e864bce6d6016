"""The function registry: runners register what they serve, and steps nobody serves say so.

Function services run in nameko containers in this process, against the
session's PostgreSQL and RabbitMQ. Heartbeats are driven by calling them,
and a dead runner is made by setting its heartbeat back in the database,
so no test waits for a clock.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from nameko.standalone.rpc import ClusterRpcClient
from pydantic import BaseModel
from sqlalchemy import delete, select, text, update

from autostep import function, registry
from autostep.db import make_session_factory, unit_of_work
from autostep.dependencies import RunnerPresence, runner_presence
from autostep.functions.service import services_for
from autostep.gateway.workflows import WorkflowsService
from autostep.models import FunctionRunner
from autostep.nameko_runtime import nameko_config
from autostep.queries import job_view
from autostep.sdk import REGISTRY
from autostep.settings import get_settings
from tests.helpers import outbox_events, publish, start


class ParcelIn(BaseModel):
    parcel_id: int
    express: bool = False


class ParcelOut(BaseModel):
    tracking: str


@function(name="registry_ship", retries=7, backoff=0.5, timeout=12)
def registry_ship(inp: ParcelIn) -> ParcelOut:
    """Ship a parcel."""
    return ParcelOut(tracking=f"T{inp.parcel_id}")


@function(name="registry_label")
def registry_label(inp: ParcelIn) -> ParcelOut:
    return ParcelOut(tracking="label")


SERVED_HERE = {"registry_ship", "registry_label"}


def _rows(session_factory: Any, runner: str) -> dict[str, FunctionRunner]:
    with unit_of_work(session_factory) as session:
        rows = session.scalars(select(FunctionRunner).where(FunctionRunner.runner == runner))
        return {row.function: row for row in rows}


def _set_heartbeat_back(session_factory: Any, seconds: float, **where: str) -> None:
    """Make rows look as if their runner last beat ``seconds`` ago."""
    with unit_of_work(session_factory) as session:
        session.execute(
            update(FunctionRunner)
            .where(*(getattr(FunctionRunner, key) == value for key, value in where.items()))
            .values(heartbeat_at=text(f"now() - interval '{seconds} seconds'"))
        )


def _register(session_factory: Any, runner: str, *names: str) -> None:
    with unit_of_work(session_factory) as session:
        registry.register(session, runner, [REGISTRY[name] for name in names])


@pytest.fixture(autouse=True)
def only_real_runners_afterwards(session_factory: Any) -> Iterator[None]:
    """Rows the tests wrote for made-up runners go when the test ends."""
    yield
    with unit_of_work(session_factory) as session:
        session.execute(
            delete(FunctionRunner).where(FunctionRunner.runner != runner_presence().runner)
        )


@pytest.fixture
def registry_runner(runner_factory: Any, platform_env: dict[str, str]) -> Any:
    """The functions of this module served by nameko, as ``autostep functions run`` would."""
    runner = runner_factory(nameko_config(), *services_for(__name__).values())
    runner.start()
    return runner


@pytest.fixture
def rpc(runner_factory: Any, platform_env: dict[str, str]) -> Iterator[Any]:
    config = nameko_config()
    runner_factory(config, WorkflowsService).start()
    with ClusterRpcClient(uri=config["AMQP_URI"], timeout=30) as client:
        yield client


def test_a_runner_registers_its_functions_with_schemas_and_removes_them_on_a_clean_stop(
    registry_runner: Any, session_factory: Any
) -> None:
    runner = runner_presence().runner

    rows = _rows(session_factory, runner)

    assert set(rows) == SERVED_HERE  # one runner id for every function of the process
    ship = rows["registry_ship"]
    assert ship.module == __name__
    assert ship.description == "Ship a parcel."
    assert ship.input_schema == ParcelIn.model_json_schema()
    assert ship.input_schema["required"] == ["parcel_id"]
    assert ship.output_schema == ParcelOut.model_json_schema()
    assert ship.policy == {"retries": 7, "backoff": 0.5, "timeout": 12}
    assert rows["registry_label"].policy == {"retries": 3, "backoff": 1.0, "timeout": None}
    with unit_of_work(session_factory) as session:
        assert registry.live_functions(session) >= SERVED_HERE

    registry_runner.stop()

    assert _rows(session_factory, runner) == {}
    with unit_of_work(session_factory) as session:
        assert not SERVED_HERE & registry.live_functions(session)


def test_a_killed_container_no_longer_serves_its_function(
    registry_runner: Any, session_factory: Any
) -> None:
    runner = runner_presence().runner

    registry_runner.kill()

    assert _rows(session_factory, runner) == {}
    assert runner_presence().specs.keys().isdisjoint(SERVED_HERE)  # no beats for them either


def test_a_heartbeat_keeps_heartbeat_at_moving(session_factory: Any) -> None:
    runner = f"beat:{uuid.uuid4().hex}"
    _register(session_factory, runner, "registry_ship", "registry_label")
    _set_heartbeat_back(session_factory, 60, runner=runner)
    before = _rows(session_factory, runner)["registry_ship"].heartbeat_at

    with unit_of_work(session_factory) as session:
        found = registry.heartbeat(session, runner, ["registry_ship", "registry_label"])
    after = _rows(session_factory, runner)

    assert found == 2
    assert (after["registry_ship"].heartbeat_at - before).total_seconds() >= 59
    assert (after["registry_label"].heartbeat_at - before).total_seconds() >= 59


def test_a_beat_registers_again_the_rows_that_went_missing(session_factory: Any) -> None:
    presence = RunnerPresence(session_factory)
    presence.specs = {name: REGISTRY[name] for name in SERVED_HERE}

    assert presence.beat() is True
    assert set(_rows(session_factory, presence.runner)) == SERVED_HERE
    with unit_of_work(session_factory) as session:
        registry.unregister(session, presence.runner, ["registry_ship"])

    assert presence.beat() is True
    assert set(_rows(session_factory, presence.runner)) == SERVED_HERE


def test_a_heartbeat_without_database_logs_one_line_and_the_next_one_recovers(
    session_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy import create_engine

    # Nothing listens on port 1 of loopback: every connection is refused.
    nowhere = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/autostep")
    presence = RunnerPresence(make_session_factory(nowhere))
    presence.specs = {"registry_ship": REGISTRY["registry_ship"]}

    with caplog.at_level(logging.WARNING, logger="autostep.dependencies"):
        failed = presence.beat()
    presence.factory = session_factory
    recovered = presence.beat()
    nowhere.dispose()

    assert failed is False
    [line] = caplog.records
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert "function registry: heartbeat of runner" in line.getMessage()
    assert "\n" not in line.getMessage()
    assert recovered is True
    assert set(_rows(session_factory, presence.runner)) == {"registry_ship"}


def test_a_runner_that_died_stops_being_live_after_the_grace(session_factory: Any) -> None:
    dead = f"dead:{uuid.uuid4().hex}"
    _register(session_factory, dead, "registry_ship")
    grace = get_settings().registry_grace_seconds

    with unit_of_work(session_factory) as session:
        live_at_first = "registry_ship" in registry.live_functions(session)
    _set_heartbeat_back(session_factory, grace - 5, runner=dead)
    with unit_of_work(session_factory) as session:
        live_within_grace = "registry_ship" in registry.live_functions(session)
    _set_heartbeat_back(session_factory, grace + 10, runner=dead)
    with unit_of_work(session_factory) as session:
        live_after_grace = "registry_ship" in registry.live_functions(session)
        recently = registry.waiting_reasons(session, ["registry_ship"])
        [listed] = [f for f in registry.list_functions(session) if f["name"] == "registry_ship"]
    _set_heartbeat_back(session_factory, 600, runner=dead)
    with unit_of_work(session_factory) as session:
        long_ago = registry.waiting_reasons(session, ["registry_ship"])
    _set_heartbeat_back(session_factory, registry.STALE_ROWS_KEPT_SECONDS + 60, runner=dead)
    _register(session_factory, f"other:{uuid.uuid4().hex}", "registry_label")

    assert live_at_first and live_within_grace
    assert not live_after_grace
    assert recently == {
        "registry_ship": f"no live runner for 'registry_ship' (last seen {grace + 10:.0f} s ago)"
    }
    assert listed["live"] is False and listed["runners"] == []
    assert listed["input_schema"] == ParcelIn.model_json_schema()
    assert long_ago == {"registry_ship": "no runner serves 'registry_ship'"}
    assert _rows(session_factory, dead) == {}  # the next registration deleted them


def test_a_queued_step_of_an_unserved_function_says_what_it_waits_for(
    session_factory: Any, project: str
) -> None:
    unserved = f"nobody_{uuid.uuid4().hex[:6]}"
    publish(
        session_factory,
        project,
        {
            "name": "ship",
            "steps": [{"name": "ship", "function": unserved}],
        },
    )

    job_id = start(session_factory, project, "ship", {"parcel_id": 1})
    with unit_of_work(session_factory) as session:
        view = job_view(session, job_id)
        [event] = outbox_events(session, "process.updated", uuid.UUID(view["processes"][0]["id"]))
    with unit_of_work(session_factory) as session:
        registry.register(
            session, f"late:{uuid.uuid4().hex}", [_renamed(REGISTRY["registry_ship"], unserved)]
        )
        served_view = job_view(session, job_id)

    [process] = view["processes"]
    assert process["status"] == "queued"
    assert process["waiting"] == f"no runner serves {unserved!r}"
    assert event["waiting"] == f"no runner serves {unserved!r}"
    assert event["status"] == "queued"
    assert served_view["processes"][0]["waiting"] is None  # a runner started meanwhile


def test_a_queued_step_of_a_served_function_waits_for_nothing(
    registry_runner: Any, session_factory: Any, project: str
) -> None:
    publish(
        session_factory,
        project,
        {"name": "served", "steps": [{"name": "ship", "function": "registry_ship"}]},
    )

    job_id = start(session_factory, project, "served", {"parcel_id": 2})
    with unit_of_work(session_factory) as session:
        view = job_view(session, job_id)
        events = outbox_events(session, "process.updated", uuid.UUID(view["processes"][0]["id"]))

    assert [p["waiting"] for p in view["processes"]] == [None]
    assert [e["waiting"] for e in events] == [None]


def test_publish_over_rpc_warns_about_unserved_functions_and_lists_served_ones(
    rpc: Any, registry_runner: Any
) -> None:
    rpc.workflows.create_project("rpc-registry")
    definition = {
        "name": "parcels",
        "steps": [
            {"name": "label", "function": "registry_label", "next": [{"to": "ship"}]},
            {"name": "ship", "function": "registry_shipp"},
        ],
    }

    published = rpc.workflows.publish_workflow("rpc-registry", definition)
    listed = {f["name"]: f for f in rpc.workflows.list_functions()}

    assert published["number"] == 1  # stored all the same: a runner may start later
    [warning] = published["warnings"]
    assert warning.startswith("steps[1] (ship): no runner serves function 'registry_shipp'; ")
    served = warning.split("; served: ")[1].split(", ")
    assert {"registry_label", "registry_ship"} <= set(served)
    assert "registry_shipp" not in served
    ship = listed["registry_ship"]
    assert ship["live"] is True
    assert ship["runners"] == [runner_presence().runner]
    assert ship["module"] == __name__
    assert ship["policy"] == {"retries": 7, "backoff": 0.5, "timeout": 12}
    assert ship["input_schema"] == ParcelIn.model_json_schema()
    assert ship["output_schema"] == ParcelOut.model_json_schema()


def _renamed(spec: Any, name: str) -> Any:
    from dataclasses import replace

    return replace(spec, name=name)


def test_following_a_queued_step_shows_its_runner_going_away(
    session_factory: Any, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autostep import queries

    monkeypatch.setattr(queries, "QUEUED_REREAD_SECONDS", 0.0)  # re-read at every poll
    runner = f"going:{uuid.uuid4().hex}"
    _register(session_factory, runner, "registry_label")
    publish(
        session_factory,
        project,
        {"name": "label", "steps": [{"name": "label", "function": "registry_label"}]},
    )
    job_id = start(session_factory, project, "label", {"parcel_id": 3})
    views = queries.follow_job(session_factory, job_id, interval=0.02, timeout=20)

    first = next(views)
    _set_heartbeat_back(session_factory, 45, runner=runner)
    second = next(views)  # nothing in the job changed; the registry did
    views.close()

    assert first["processes"][0]["waiting"] is None
    assert second["processes"][0]["waiting"].startswith(
        "no live runner for 'registry_label' (last seen 4"
    )
