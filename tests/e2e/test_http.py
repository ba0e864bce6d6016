"""The REST gateway over real HTTP: ``autostep gateway run`` as a subprocess, httpx as the client.

- CRUD round trips of projects, workflows and versions; archiving and
  deleting refuse while something depends on them.
- Every class of bad input answers a 4xx problem naming the field, and
  writes nothing.
- A run started over REST finishes; jobs are listed with filters, page by page.
- Cancel during a fan-out; rerun from the failed step (the effect table shows
  the step that succeeded did not run again).
- The function catalogue: served functions with schemas and runners, an
  unserved one in publish warnings and in ``waiting``; a fan-out's children
  page by page.
- Health, readiness, metrics, the OpenAPI document and the docs page from local assets;
  the HTTP process never imports eventlet or nameko.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from autostep import queries
from autostep.db import unit_of_work
from autostep.gateway.http.schemas import JobDetail
from tests.e2e.conftest import REPO_ROOT, Gateway, ManagedProcess, free_port
from tests.e2e.http_checks import PROBLEM, _ok, _problem, _until

pytestmark = pytest.mark.e2e


def _fields(problem: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(error.get("location"), error["field"]) for error in problem["errors"]]


def _scalar(session_factory: Any, sql: str, **params: Any) -> Any:
    with unit_of_work(session_factory) as session:
        return session.execute(text(sql), params).scalar()


def _finished(api: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = _ok(api.get(f"/jobs/{job_id}"))
    return job if job["status"] != "running" else None


@pytest.fixture
def project(api: httpx.Client) -> dict[str, Any]:
    """A project created over REST."""
    created: dict[str, Any] = _ok(
        api.post("/projects", json={"name": f"http-{uuid.uuid4().hex[:8]}"}), 201
    )
    return created


def _create_workflow(api: httpx.Client, project: dict[str, Any], definition: Any) -> Any:
    return _ok(api.post(f"/projects/{project['id']}/workflows", json=definition), 201)


CHAIN = {
    "name": "chain",
    "steps": [
        {"name": "first", "function": "fibo", "next": [{"to": "second"}]},
        {"name": "second", "function": "noop"},
    ],
}


# -- CRUD ------------------------------------------------------------------------------


def test_projects_workflows_and_versions_round_trip(api: httpx.Client) -> None:
    name = f"crud-{uuid.uuid4().hex[:8]}"
    project = _ok(api.post("/projects", json={"name": name, "description": "d"}), 201)
    assert project["workflows"] == 0
    assert _ok(api.get(f"/projects/{project['id']}")) == project
    assert project in _ok(api.get("/projects"))
    renamed = _ok(api.patch(f"/projects/{project['id']}", json={"name": name + "-x"}))
    assert (renamed["name"], renamed["description"]) == (name + "-x", "d")
    _problem(api.post("/projects", json={"name": name + "-x"}), 409)

    published = _create_workflow(api, project, CHAIN)
    workflow = published["workflow"]
    assert (workflow["name"], workflow["project_id"], workflow["versions"]) == (
        "chain",
        project["id"],
        [1],
    )
    assert published["version"]["number"] == 1
    assert isinstance(published["warnings"], list)
    _problem(api.post(f"/projects/{project['id']}/workflows", json=CHAIN), 409)

    second = {**CHAIN, "description": "two", "steps": [{"name": "only", "function": "noop"}]}
    again = _ok(api.post(f"/workflows/{workflow['id']}/versions", json=second), 201)
    assert again["version"]["number"] == 2
    assert [v["number"] for v in _ok(api.get(f"/workflows/{workflow['id']}/versions"))] == [1, 2]
    version = _ok(api.get(f"/workflows/{workflow['id']}/versions/2"))
    assert [s["name"] for s in version["steps"]] == ["only"]
    assert version["definition"]["steps"][0]["function"] == "noop"
    first = _ok(api.get(f"/workflows/{workflow['id']}/versions/1"))
    assert first["steps"][0]["next"] == [{"to": "second", "when": None}]
    listed = _ok(api.get(f"/projects/{project['id']}/workflows"))
    assert [(w["name"], w["version"]) for w in listed] == [("chain", 2)]

    # archiving: a soft delete; the project still counts the workflow
    archived = _ok(api.delete(f"/workflows/{workflow['id']}"))
    assert archived["archived_at"] is not None
    assert _ok(api.get(f"/workflows/{workflow['id']}"))["archived_at"] == archived["archived_at"]
    assert _ok(api.get(f"/projects/{project['id']}/workflows")) == []
    assert len(_ok(api.get(f"/projects/{project['id']}/workflows?archived=true"))) == 1
    _problem(api.post(f"/workflows/{workflow['id']}/versions", json=CHAIN), 409)
    _problem(api.post(f"/workflows/{workflow['id']}/jobs", json={}), 409)
    refused = _problem(api.delete(f"/projects/{project['id']}"), 409)
    assert "has workflows" in refused["detail"]

    empty = _ok(api.post("/projects", json={"name": name + "-empty"}), 201)
    _problem(api.patch(f"/projects/{empty['id']}", json={"name": name + "-x"}), 409)
    assert api.delete(f"/projects/{empty['id']}").status_code == 204
    _problem(api.get(f"/projects/{empty['id']}"), 404)


# -- bad input ---------------------------------------------------------------------------

COUNTED_TABLES = ("project", "workflow", "workflow_version", "step", "job", "process", "outbox")


def _row_counts(session_factory: Any) -> dict[str, int]:
    return {t: _scalar(session_factory, f"SELECT count(*) FROM {t}") for t in COUNTED_TABLES}


def test_bad_input_answers_a_problem_naming_the_field_and_writes_nothing(
    api: httpx.Client, project: dict[str, Any], session_factory: Any
) -> None:
    workflow = _create_workflow(api, project, CHAIN)["workflow"]
    pid, wid = project["id"], workflow["id"]
    # start steps that read the run's input: a mapping, and a fan-out
    mapped = _create_workflow(
        api,
        project,
        {"name": "mapped", "steps": [{"name": "a", "function": "noop", "input": {"n": "input.n"}}]},
    )["workflow"]["id"]
    fanned = _create_workflow(
        api,
        project,
        {"name": "fanned", "steps": [{"name": "a", "function": "noop", "for_each": "input.items"}]},
    )["workflow"]["id"]
    missing = str(uuid.uuid4())
    json_headers = {"content-type": "application/json"}
    before = _row_counts(session_factory)

    cases: list[tuple[httpx.Response, int, list[tuple[str | None, str]]]] = [
        # FastAPI's validation: each field with where it was
        (api.post("/projects", json={"name": "1st"}), 422, [("body", "name")]),
        (api.post("/projects", json={"name": "ok", "owner": "x"}), 422, [("body", "owner")]),
        (api.post("/projects", json={}), 422, [("body", "name")]),
        (api.get("/projects/not-an-id"), 422, [("path", "project_id")]),
        (api.get("/jobs", params={"limit": 0}), 422, [("query", "limit")]),
        (api.get("/jobs", params={"status": "lost"}), 422, [("query", "status")]),
        (
            api.get("/jobs", params={"created_from": "2026-01-01T00:00:00"}),
            422,
            [("query", "created_from")],
        ),
        (
            api.post(f"/workflows/{wid}/jobs", json={"input": [1, 2]}),
            422,
            [("body", "input")],
        ),
        (api.post(f"/workflows/{wid}/jobs", json={"version": 0}), 422, [("body", "version")]),
        (
            api.post(
                f"/projects/{pid}/workflows",
                json={"name": "bad", "steps": [{"name": "a", "function": "f", "retries": -1}]},
            ),
            422,
            [("body", "steps[0].retries")],
        ),
        # the core's checks: the field, as the core names it
        (api.get("/jobs", params={"cursor": "garbage"}), 422, [(None, "cursor")]),
        (
            api.post(
                f"/projects/{pid}/workflows",
                json={
                    "name": "bad",
                    "steps": [{"name": "a", "function": "f", "next": [{"to": "a", "when": "x >"}]}],
                },
            ),
            422,
            [(None, "steps[0].next[0].when")],
        ),
        (
            api.post(
                f"/projects/{pid}/workflows",
                json={
                    "name": "bad",
                    "steps": [{"name": "a", "function": "f", "next": [{"to": "b"}]}],
                },
            ),
            422,
            [(None, "steps[0].next[0].to")],
        ),
        (
            api.post(f"/workflows/{wid}/versions", json={**CHAIN, "name": "other"}),
            422,
            [(None, "name")],
        ),
        (
            api.post(
                f"/workflows/{wid}/jobs",
                content='{"input": {"x": NaN}}',
                headers=json_headers,
            ),
            422,
            [(None, "input")],
        ),
        (
            api.post(f"/workflows/{wid}/jobs", json={"input": {"x": "a\u0000b"}}),
            422,
            [(None, "input")],
        ),
        # an input the start step cannot take: refused, not a run failed at birth
        (api.post(f"/workflows/{mapped}/jobs", json={"input": {}}), 422, [(None, "input")]),
        (api.post(f"/workflows/{fanned}/jobs", json={"input": {}}), 422, [(None, "input")]),
        # not JSON, too large, of another type
        (api.post("/projects", content='{"name": ', headers=json_headers), 400, []),
        (
            api.post("/projects", content='{"name": "p"}', headers={"content-type": "text/plain"}),
            415,
            [],
        ),
        (
            api.post(f"/workflows/{wid}/jobs", json={"input": {"blob": "x" * (1024 * 1024 + 10)}}),
            413,
            [],
        ),
        (
            api.post(
                f"/workflows/{wid}/jobs",
                content=(b'{"input": {"blob": "' + b"x" * 65536 for _ in range(20)),
                headers=json_headers,
            ),
            413,
            [],
        ),
        # what does not exist, or is in the wrong state
        (api.get(f"/projects/{missing}"), 404, []),
        (api.get(f"/workflows/{missing}"), 404, []),
        (api.get(f"/workflows/{wid}/versions/9"), 404, []),
        (api.post(f"/workflows/{wid}/jobs", json={"version": 9}), 404, []),
        (api.post(f"/workflows/{missing}/jobs", json={}), 404, []),
        (api.get(f"/jobs/{missing}"), 404, []),
        (api.post(f"/jobs/{missing}/cancel"), 404, []),
        (api.post(f"/jobs/{missing}/rerun"), 404, []),
        (api.get(f"/jobs/{missing}/processes/{missing}/children"), 404, []),
        (api.get("/jobs", params={"project": missing}), 404, []),
        (api.get("/functions/no_such_function"), 404, []),
        (api.delete(f"/projects/{pid}"), 409, []),
    ]
    for number, (response, status, fields) in enumerate(cases):
        problem = _problem(response, status)
        assert _fields(problem) == fields, (number, problem)
        assert problem["instance"] == response.request.url.path, number
        for field in fields:
            assert field[1] in problem["detail"], (number, problem)
    assert _row_counts(session_factory) == before


# -- runs --------------------------------------------------------------------------------


def test_a_run_started_over_rest_finishes_and_jobs_list_page_by_page(
    api: httpx.Client,
    project: dict[str, Any],
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
    session_factory: Any,
) -> None:
    workflow = _create_workflow(api, project, CHAIN)["workflow"]
    started = _ok(api.post(f"/workflows/{workflow['id']}/jobs", json={"input": {"n": 10}}), 201)
    assert (started["status"], started["trigger"], started["input"]) == (
        "running",
        "api",
        {"n": 10},
    )
    job = _until(lambda: _finished(api, started["id"]))
    assert job["status"] == "succeeded", job
    assert job["output"] == {"n": 10, "value": 55}
    assert [(p["step"], p["status"]) for p in job["processes"]] == [
        ("first", "succeeded"),
        ("second", "succeeded"),
    ]
    assert job["processes"][0]["input"] == {"n": 10}  # what the function was called with
    # the gateway reads a job on its event loop with the core's statement: it answers
    # exactly what the core's own read (the RPC service's and the CLI's) gives
    with unit_of_work(session_factory) as session:
        core = JobDetail.model_validate(queries.job_tree(session, job["id"]))
    assert job == json.loads(core.model_dump_json())

    more = [
        _ok(api.post(f"/workflows/{workflow['id']}/jobs", json={"input": {"n": i}}), 201)["id"]
        for i in range(4)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"workflow": workflow["id"], "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = _ok(api.get("/jobs", params=params))
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [*reversed(more), started["id"]]  # newest first, none twice, none left out
    by_project = _ok(api.get("/jobs", params={"project": project["id"], "trigger": "api"}))
    assert {j["id"] for j in by_project["items"]} == {started["id"], *more}
    assert all(j["workflow"] == "chain" for j in by_project["items"])
    for job_id in more:
        _until(lambda job_id=job_id: _finished(api, job_id))
    succeeded = _ok(api.get("/jobs", params={"workflow": workflow["id"], "status": "succeeded"}))
    assert len(succeeded["items"]) == 5
    assert (
        _ok(api.get("/jobs", params={"workflow": workflow["id"], "status": "failed"}))["items"]
        == []
    )
    later = _ok(
        api.get("/jobs", params={"project": project["id"], "created_from": "2999-01-01T00:00:00Z"})
    )
    assert later == {"items": [], "next": None}


def test_cancel_during_a_fan_out_over_rest(
    api: httpx.Client,
    project: dict[str, Any],
    session_factory: Any,
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
) -> None:
    definition = {
        "name": "slowfan",
        "steps": [{"name": "each", "function": "t_item", "for_each": "input.items"}],
    }
    workflow = _create_workflow(api, project, definition)["workflow"]
    items = [{"sleep": 1.5, "report": True} for _ in range(6)]
    job = _ok(api.post(f"/workflows/{workflow['id']}/jobs", json={"input": {"items": items}}), 201)

    def a_child_runs() -> bool:
        children = _ok(api.get(f"/jobs/{job['id']}"))["processes"][0]["children"]["items"]
        return any(child["status"] == "running" for child in children)

    _until(a_child_runs)
    in_flight = _problem(api.delete(f"/workflows/{workflow['id']}"), 409)
    assert "1 run(s) in flight" in in_flight["detail"]
    cancelled = _ok(api.post(f"/jobs/{job['id']}/cancel"))
    assert cancelled["status"] == "cancelled"
    (fan_out,) = cancelled["processes"]
    assert fan_out["status"] == "cancelled"
    assert {c["status"] for c in fan_out["children"]["items"]} == {"cancelled"}
    assert fan_out["children"]["total"] == 6

    # the running functions finish, and their transactions roll back
    calls = (
        "SELECT count(*) FROM test_call c JOIN process p ON p.id = c.process_id "
        "WHERE p.job_id = :job"
    )
    _until(lambda: _scalar(session_factory, calls, job=job["id"]) == 6)
    time.sleep(0.5)  # let their transactions end
    effects = (
        "SELECT count(*) FROM test_effect e JOIN process p ON p.id = e.process_id "
        "WHERE p.job_id = :job"
    )
    assert _scalar(session_factory, effects, job=job["id"]) == 0
    again = _ok(api.post(f"/jobs/{job['id']}/cancel"))
    assert (again["status"], again["version"]) == ("cancelled", cancelled["version"])
    assert _ok(api.delete(f"/workflows/{workflow['id']}"))["archived_at"] is not None


def test_rerun_over_rest_does_not_run_the_succeeded_steps_again(
    api: httpx.Client,
    project: dict[str, Any],
    session_factory: Any,
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
) -> None:
    gate = f"http-{uuid.uuid4().hex[:8]}"
    definition = {
        "name": "gated",
        "steps": [
            {"name": "a", "function": "t_add", "next": [{"to": "b"}]},
            {"name": "b", "function": "t_gated", "config": {"gate": gate}, "next": [{"to": "c"}]},
            {"name": "c", "function": "t_add"},
        ],
    }
    workflow = _create_workflow(api, project, definition)["workflow"]
    first = _ok(api.post(f"/workflows/{workflow['id']}/jobs", json={"input": {"value": 10}}), 201)
    failed = _until(lambda: _finished(api, first["id"]))
    assert failed["status"] == "failed" and "gate" in failed["error"], failed
    with unit_of_work(session_factory) as session:
        session.execute(text("INSERT INTO test_gate (name) VALUES (:n)"), {"n": gate})

    rerun = _ok(api.post(f"/jobs/{first['id']}/rerun"), 201)
    assert (rerun["rerun_of"], rerun["trigger"]) == (first["id"], "api")
    done = _until(lambda: _finished(api, rerun["id"]))
    assert done["status"] == "succeeded", done
    assert done["output"] == {"value": 12}
    reused = {p["step"]: p["reused_from"] for p in done["processes"]}
    assert reused["a"] == failed["processes"][0]["id"]
    assert reused["b"] is None and reused["c"] is None
    # the effect table: the steps whose functions committed, per job
    rows = (
        "SELECT e.step FROM test_effect e JOIN process p ON p.id = e.process_id "
        "WHERE p.job_id = :job ORDER BY e.created_at"
    )
    with unit_of_work(session_factory) as session:
        assert list(session.execute(text(rows), {"job": first["id"]}).scalars()) == ["a"]
        assert list(session.execute(text(rows), {"job": rerun["id"]}).scalars()) == ["b", "c"]
    conflict = _problem(api.post(f"/jobs/{rerun['id']}/rerun"), 409)
    assert "nothing to rerun" in conflict["detail"]


def test_a_repeated_idempotency_key_starts_one_job(
    api: httpx.Client, gateway: Gateway, project: dict[str, Any], session_factory: Any
) -> None:
    workflow = _create_workflow(api, project, CHAIN)["workflow"]
    path = f"/workflows/{workflow['id']}/jobs"
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    body = {"input": {"n": 5}}

    def start(_: int) -> httpx.Response:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            return client.post(path, json=body, headers=key)

    with ThreadPoolExecutor(max_workers=6) as pool:  # the same key at the same moment
        answers = list(pool.map(start, range(6)))
    assert sorted(a.status_code for a in answers) == [200] * 5 + [201], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert [a.headers.get("Idempotent-Replayed") for a in answers].count("true") == 5
    replayed = _ok(api.post(path, json=body, headers=key))
    assert replayed["id"] == answers[0].json()["id"]
    jobs = "SELECT count(*) FROM job WHERE workflow_id = :w"
    assert _scalar(session_factory, jobs, w=workflow["id"]) == 1

    other = _problem(api.post(path, json={"input": {"n": 6}}, headers=key), 422)
    assert _fields(other) == [(None, "Idempotency-Key")]
    too_long = _problem(api.post(path, json=body, headers={"Idempotency-Key": "k" * 201}), 422)
    assert _fields(too_long) == [("header", "Idempotency-Key")]
    fresh = _ok(api.post(path, json=body, headers={"Idempotency-Key": "another"}), 201)
    assert fresh["id"] != replayed["id"]
    assert _scalar(session_factory, jobs, w=workflow["id"]) == 2


# -- the function catalogue --------------------------------------------------------------


def test_served_and_unserved_functions(
    api: httpx.Client,
    project: dict[str, Any],
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
) -> None:
    ours = f":{runner_process.pid}:"  # runner ids are host:pid:random

    def registered() -> dict[str, Any] | None:
        # earlier tests' runners may have left rows (a SIGKILL does not unregister)
        listed = {f["name"]: f for f in _ok(api.get("/functions"))}
        wanted = [listed.get(name) for name in ("fibo", "t_gated", "t_item")]
        served = all(f and any(ours in runner for runner in f["runners"]) for f in wanted)
        return listed if served else None

    listed = _until(registered, timeout=20)  # the runner registers once it has started
    fibo = _ok(api.get("/functions/fibo"))
    # the heartbeat's age moves between two reads; everything else is the same
    moving = {"last_heartbeat", "seconds_since_heartbeat", "runners"}
    assert {k: v for k, v in fibo.items() if k not in moving} == {
        k: v for k, v in listed["fibo"].items() if k not in moving
    }
    assert fibo["live"] is True and any(ours in runner for runner in fibo["runners"])
    assert fibo["module"] == "autostep.functions.builtins"
    assert fibo["input_schema"]["properties"]["n"]["type"] == "integer"
    assert "value" in fibo["output_schema"]["properties"]
    assert set(fibo["policy"]) >= {"retries", "backoff", "timeout"}

    definition = {
        "name": "nobody",
        "steps": [
            {"name": "seed", "function": "noop", "next": [{"to": "each"}]},
            {"name": "each", "function": "t_nobody", "for_each": "input.items"},
        ],
    }
    published = _create_workflow(api, project, definition)
    assert len(published["warnings"]) == 1
    assert published["warnings"][0].startswith(
        "steps[1] (each): no runner serves function 't_nobody'"
    )
    _problem(api.get("/functions/t_nobody"), 404)

    items = list(range(120))
    job = _ok(
        api.post(
            f"/workflows/{published['workflow']['id']}/jobs", json={"input": {"items": items}}
        ),
        201,
    )

    def fanned_out() -> dict[str, Any] | None:
        view: dict[str, Any] = _ok(api.get(f"/jobs/{job['id']}"))
        return view if len(view["processes"]) == 2 else None

    view = _until(fanned_out)
    seed, each = view["processes"]
    assert (seed["status"], seed["waiting"]) == ("succeeded", None)
    assert each["kind"] == "fanout" and each["children"]["total"] == 120
    page = each["children"]
    children = list(page["items"])
    assert len(children) == 50 and page["next"] == 49
    while page["next"] is not None:
        page = _ok(
            api.get(
                f"/jobs/{job['id']}/processes/{each['id']}/children",
                params={"after": page["next"], "limit": 50},
            )
        )
        children += page["items"]
    assert [c["item_index"] for c in children] == items
    assert {c["status"] for c in children} == {"queued"}
    assert {c["waiting"] for c in children} == {"no runner serves 't_nobody'"}
    _ok(api.post(f"/jobs/{job['id']}/cancel"))

    # a job without a fan-out is read on the gateway's event loop: the same `waiting`
    alone = {"name": "alone", "steps": [{"name": "only", "function": "t_nobody"}]}
    workflow = _create_workflow(api, project, alone)["workflow"]
    single = _ok(api.post(f"/workflows/{workflow['id']}/jobs", json={"input": {}}), 201)
    (only,) = _ok(api.get(f"/jobs/{single['id']}"))["processes"]
    assert (only["status"], only["waiting"]) == ("queued", "no runner serves 't_nobody'")
    _ok(api.post(f"/jobs/{single['id']}/cancel"))


# -- operations and the documents ----------------------------------------------------------


def test_health_readiness_openapi_and_docs(
    api: httpx.Client, start_gateway: Callable[..., Gateway]
) -> None:
    assert _ok(api.get("/healthz")) == {"status": "ok"}
    assert _ok(api.get("/readyz")) == {"database": True, "broker": True}
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    blind = start_gateway("blind-gateway", AUTOSTEP_AMQP_URI=nowhere)
    problem = _problem(httpx.get(f"{blind.url}/readyz", timeout=10), 503)
    assert problem["detail"] == "not reachable: broker"
    assert httpx.get(f"{blind.url}/healthz", timeout=10).status_code == 200
    # without its database, a read on the event loop answers 503 too, not 500
    dark = start_gateway(
        "dark-gateway",
        AUTOSTEP_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none",
    )
    problem = _problem(httpx.get(f"{dark.url}/jobs/{uuid.uuid4()}", timeout=30), 503)
    assert problem["detail"] == "the database is unavailable; try again shortly", problem

    document = _ok(api.get("/openapi.json"))
    assert document["openapi"].startswith("3.1")
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    assert len(operations) >= 20
    documented = set()
    for path, method, operation in operations:
        for status, response in operation["responses"].items():
            if status.startswith("4") or status.startswith("5"):
                assert list(response["content"]) == [PROBLEM], (path, method, status)
                documented.add(status)
    assert {"400", "401", "404", "409", "413", "415", "422"} <= documented
    assert "Problem" in document["components"]["schemas"]

    missing = str(uuid.uuid4())
    _problem(api.get(f"/jobs/{missing}"), 404)
    _problem(api.get(f"/no/such/{missing}"), 404)
    exposed = api.get("/metrics")
    assert exposed.status_code == 200 and exposed.headers["content-type"].startswith("text/plain")
    assert (
        'autostep_http_requests_total{method="GET",route="/jobs/{job_id}",status="404"} 1.0'
        in exposed.text
    )
    assert 'route="unmatched",status="404"} 1.0' in exposed.text
    assert 'autostep_http_request_duration_seconds_count{method="GET",route="/readyz"}' in (
        exposed.text
    )
    assert missing not in exposed.text  # ids never become labels

    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower() and "https://" not in docs.text
    bundle = api.get("/static-offline-docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and "SwaggerUIBundle" in bundle.text


def test_the_http_process_imports_neither_eventlet_nor_nameko(platform_env: dict[str, str]) -> None:
    """What ``autostep gateway run`` imports to build its app leaves eventlet and nameko out."""
    script = (
        "import sys\n"
        "from autostep.gateway.http.app import create_app\n"
        "create_app()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('eventlet', 'nameko', 'kombu', 'greenlet')))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**platform_env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout.replace("'", '"')) == []


# -- the OpenAPI contract, fuzzed ----------------------------------------------------------

#: What schemathesis checks on every answer.
SCHEMATHESIS_CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_schema(
    api: httpx.Client,
    gateway: Gateway,
    project: dict[str, Any],
    session_factory: Any,
    tmp_path: Path,
) -> None:
    """About 10 examples per operation, on real ids so they reach the core, not only 404s.

    The webhook is called with its token, so its bodies reach the core; once
    schemathesis rotates the token (``POST /triggers/{id}/token``) the calls
    answer 401, which must be documented like any other answer.

    The workflow's run stays in flight (no runner serves ``noop`` here), so
    the project and the workflow survive the DELETEs schemathesis sends.
    """
    workflow = _create_workflow(api, project, CHAIN)["workflow"]
    job = _ok(api.post(f"/workflows/{workflow['id']}/jobs", json={"input": {"n": 3}}), 201)
    hook = {"workflow_id": workflow["id"], "name": "hook", "kind": "webhook"}
    trigger = _ok(api.post("/triggers", json=hook), 201)
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[parameters]\n"
        f'project_id = "{project["id"]}"\n'
        f'workflow_id = "{workflow["id"]}"\n'
        f'job_id = "{job["id"]}"\n'
        f'process_id = "{job["processes"][0]["id"]}"\n'
        'name = "fibo"\n'
        f'trigger_id = "{trigger["id"]}"\n'
        "[auth.openapi.WebhookToken]\n"
        f'api_key = "{trigger["token"]}"\n'
    )
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(config),
        "run",
        f"{gateway.url}/openapi.json",
        "--checks",
        SCHEMATHESIS_CHECKS,
        "--max-examples",
        "10",
        "--seed",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--generation-database",
        "none",
        "--no-color",
    ]
    found = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stdout[-6000:] + found.stderr[-2000:]
    operations = sum(len(item) for item in _ok(api.get("/openapi.json"))["paths"].values())
    assert f"{operations} selected / {operations} total" in found.stdout, found.stdout[-3000:]
    started = "SELECT count(*) FROM job WHERE trigger_id = :t"
    assert _scalar(session_factory, started, t=trigger["id"]) > 0  # the webhook's calls got in
