"""Triggers over real HTTP: ``autostep gateway run`` as a subprocess, httpx as the client.

- CRUD round trip of each kind (create, read, list page by page, patch,
  disable, delete), each write with its ``trigger.changed`` outbox row.
- Every bad trigger answers a 4xx problem naming the field, and stores
  nothing (trigger and outbox rows counted).
- A webhook call starts a run that succeeds; a missing or wrong token, an
  unknown id, a rotated-away token: 401 alike; disabled 409; too large 413.
- A repeated ``Idempotency-Key`` on the webhook, six at once, starts one job.
- A manual trigger fired over REST, with its preset and overrides.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from autostep.db import unit_of_work
from tests.e2e.conftest import Gateway, ManagedProcess
from tests.e2e.http_checks import _ok, _problem, _until
from tests.helpers import outbox_events

pytestmark = pytest.mark.e2e

TOKEN = "X-Autostep-Token"
#: Webhook calls sent at once with one Idempotency-Key.
RACING_CALLS = 6

CHAIN = {
    "name": "chain",
    "steps": [
        {"name": "first", "function": "fibo", "next": [{"to": "second"}]},
        {"name": "second", "function": "noop"},
    ],
}


def _fields(problem: dict[str, Any]) -> list[str]:
    return [error["field"] for error in problem["errors"]]


def _scalar(session_factory: Any, sql: str, **params: Any) -> Any:
    with unit_of_work(session_factory) as session:
        return session.execute(text(sql), params).scalar()


def _announced(session_factory: Any, trigger_id: str) -> list[tuple[int, bool, bool]]:
    """The (version, enabled, deleted) of the trigger's ``trigger.changed`` rows, in order."""
    with unit_of_work(session_factory) as session:
        rows = outbox_events(session, "trigger.changed", trigger_id)
        return [(p["version"], p["enabled"], p["deleted"]) for p in rows]


def _finished(api: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = _ok(api.get(f"/jobs/{job_id}"))
    return job if job["status"] != "running" else None


@pytest.fixture
def workflow(api: httpx.Client) -> dict[str, Any]:
    """A workflow (``fibo`` then ``noop``) in a new project, over REST."""
    project = _ok(api.post("/projects", json={"name": f"trig-{uuid.uuid4().hex[:8]}"}), 201)
    created = _ok(api.post(f"/projects/{project['id']}/workflows", json=CHAIN), 201)
    found: dict[str, Any] = created["workflow"]
    return found


def _create(api: httpx.Client, workflow: dict[str, Any], **fields: Any) -> dict[str, Any]:
    created: dict[str, Any] = _ok(
        api.post("/triggers", json={"workflow_id": workflow["id"], **fields}), 201
    )
    return created


# -- CRUD ------------------------------------------------------------------------------


def test_each_kind_round_trips_and_every_write_is_announced(
    api: httpx.Client, workflow: dict[str, Any], session_factory: Any
) -> None:
    cron = _create(
        api,
        workflow,
        name="nightly",
        kind="cron",
        config={"schedule": "30 2 * * MON-FRI", "time_zone": "Europe/Berlin"},
        input_template='{"n": 3, "at": scheduled_time}',
    )
    assert cron["config"]["concurrency"] == "allow" and cron["config"]["catch_up"] == "latest"
    assert len(cron["next_fire_times"]) == 5 and cron["ticks"] == []
    assert (cron["token"], cron["curl"], cron["path"]) == (None, None, None)
    hook = _create(api, workflow, name="hook", kind="webhook")
    assert hook["path"] == f"/hooks/{hook['id']}" and len(hook["token"]) >= 32
    assert f"{TOKEN}: {hook['token']}" in hook["curl"] and hook["path"] in hook["curl"]
    manual = _create(api, workflow, name="button", kind="manual", config={"input": {"n": 4}})
    assert (manual["config"], manual["next_fire_times"]) == ({"input": {"n": 4}}, [])

    shown = _ok(api.get(f"/triggers/{hook['id']}"))
    assert "token" not in shown and hook["token"] not in str(shown)
    assert shown["path"] == hook["path"] and shown["version"] == 1
    assert _ok(api.get(f"/triggers/{cron['id']}"))["next_fire_times"] == cron["next_fire_times"]

    # the list, by workflow, page by page (by name)
    seen, cursor = [], None
    while True:
        params = {"workflow": workflow["id"], "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = _ok(api.get("/triggers", params=params))
        seen += [t["name"] for t in page["items"]]
        if (cursor := page["next"]) is None:
            break
    assert seen == ["button", "hook", "nightly"]
    by_kind = _ok(api.get("/triggers", params={"project": workflow["project_id"], "kind": "cron"}))
    assert [t["id"] for t in by_kind["items"]] == [cron["id"]]

    changed = _ok(
        api.patch(
            f"/triggers/{cron['id']}",
            json={"name": "hourly", "config": {"schedule": "@hourly"}, "input_template": None},
        )
    )
    assert (changed["name"], changed["config"]["schedule"], changed["input_template"]) == (
        "hourly",
        "@hourly",
        None,
    )
    assert changed["config"]["time_zone"] == "UTC"  # the config is replaced whole
    assert changed["version"] == 2
    disabled = _ok(api.patch(f"/triggers/{cron['id']}", json={"enabled": False}))
    assert (disabled["enabled"], disabled["next_fire_times"], disabled["version"]) == (
        False,
        [],
        3,
    )
    assert disabled["name"] == "hourly"  # left out: unchanged
    _problem(api.patch(f"/triggers/{cron['id']}", json={"name": "hook"}), 409)

    assert api.delete(f"/triggers/{cron['id']}").status_code == 204
    _problem(api.get(f"/triggers/{cron['id']}"), 404)
    _problem(api.delete(f"/triggers/{cron['id']}"), 404)
    assert _announced(session_factory, cron["id"]) == [
        (1, True, False),
        (2, True, False),
        (3, False, False),
        (4, False, True),
    ]
    assert _announced(session_factory, hook["id"]) == [(1, True, False)]
    rotated = _ok(api.post(f"/triggers/{hook['id']}/token"))
    assert rotated["token"] != hook["token"] and rotated["token"] in rotated["curl"]
    assert _announced(session_factory, hook["id"]) == [(1, True, False), (2, True, False)]
    _problem(api.post(f"/triggers/{manual['id']}/token"), 409)


# -- bad input -----------------------------------------------------------------------------

COUNTED = ("trigger", "outbox", "job")


def test_a_bad_trigger_is_refused_naming_the_field_and_nothing_is_stored(
    api: httpx.Client, workflow: dict[str, Any], session_factory: Any
) -> None:
    cron = _create(api, workflow, name="kept", kind="cron", config={"schedule": "@daily"})
    before = {t: _scalar(session_factory, f"SELECT count(*) FROM {t}") for t in COUNTED}
    wid = workflow["id"]
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"kind": "cron", "config": {"schedule": "* * * *"}}, 422, "config.schedule"),
        ({"kind": "cron", "config": {"schedule": "0 0 L * *"}}, 422, "config.schedule"),
        ({"kind": "cron", "config": {"schedule": "* * * * * *"}}, 422, "config.schedule"),
        ({"kind": "cron", "config": {"schedule": "@reboot"}}, 422, "config.schedule"),
        (
            {"kind": "cron", "config": {"schedule": "@daily", "time_zone": "Mars/Olympus"}},
            422,
            "config.time_zone",
        ),
        (
            {"kind": "cron", "config": {"schedule": "@daily", "catch_up_limit": 0}},
            422,
            "config.catch_up_limit",
        ),
        ({"kind": "cron", "config": {}}, 422, "config.schedule"),
        ({"kind": "webhook", "config": {"secret": "x"}}, 422, "config.secret"),
        ({"kind": "manual", "config": {"input": {"n": 1}}, "owner": "x"}, 422, "owner"),
        ({"kind": "email"}, 422, "kind"),
        ({}, 422, "kind"),
        ({"kind": "manual", "name": "1st"}, 422, "name"),
        ({"kind": "manual", "workflow_id": str(uuid.uuid4())}, 422, "workflow_id"),
        ({"kind": "manual", "input_template": "input.x +"}, 422, "input_template"),
        ({"kind": "manual", "input_template": "body.x"}, 422, "input_template"),
        ({"kind": "cron", "config": {"schedule": "@daily"}, "name": "kept"}, 409, ""),
    ]
    for number, (body, status, field) in enumerate(cases):
        sent = {"workflow_id": wid, "name": f"bad{number}", **body}
        problem = _problem(api.post("/triggers", json=sent), status)
        assert _fields(problem) == ([field] if field else []), (number, problem)
        assert field in problem["detail"], (number, problem)
    patches: list[tuple[dict[str, Any], str]] = [
        ({"config": {"schedule": "61 * * * *"}}, "config.schedule"),
        ({"config": {"schedule": "@daily", "time_zone": "Nowhere"}}, "config.time_zone"),
        ({"input_template": "preset.x"}, "input_template"),
        ({"enabled": "maybe"}, "enabled"),
    ]
    for number, (body, field) in enumerate(patches):
        problem = _problem(api.patch(f"/triggers/{cron['id']}", json=body), 422)
        assert _fields(problem) == [field], (number, problem)
    assert _ok(api.get(f"/triggers/{cron['id']}"))["version"] == 1
    _problem(api.get("/triggers", params={"cursor": "garbage"}), 422)
    _problem(api.get("/triggers", params={"project": str(uuid.uuid4())}), 404)
    after = {t: _scalar(session_factory, f"SELECT count(*) FROM {t}") for t in COUNTED}
    assert after == before


# -- the webhook ----------------------------------------------------------------------------


def test_a_webhook_call_starts_a_run_and_only_with_the_current_token(
    api: httpx.Client,
    workflow: dict[str, Any],
    session_factory: Any,
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
) -> None:
    hook = _create(
        api,
        workflow,
        name="hook",
        kind="webhook",
        config={"max_body_bytes": 200},
        input_template='{"n": body.n, "agent": headers["x-agent"]}',
    )
    path = hook["path"]
    token = {TOKEN: hook["token"]}
    accepted = _ok(api.post(path, json={"n": 10}, headers={**token, "X-Agent": "t"}), 202)
    assert accepted["status_url"] == f"/jobs/{accepted['job_id']}"
    job = _until(lambda: _finished(api, accepted["job_id"]))
    assert job["status"] == "succeeded", job
    assert (job["trigger"], job["input"]) == ("webhook", {"n": 10, "agent": "t"})
    assert job["output"] == {"n": 10, "value": 55}
    jobs = "SELECT count(*) FROM job WHERE trigger_id = :t"
    assert _scalar(session_factory, jobs, t=hook["id"]) == 1

    cron = _create(api, workflow, name="cron", kind="cron", config={"schedule": "@daily"})
    refused = [
        api.post(path, json={"n": 1}),  # no token
        api.post(path, json={"n": 1}, headers={TOKEN: ""}),
        api.post(path, json={"n": 1}, headers={TOKEN: hook["token"][:-1]}),
        api.post(f"/hooks/{uuid.uuid4()}", json={"n": 1}, headers=token),  # no such trigger
        api.post(f"/hooks/{cron['id']}", json={"n": 1}, headers=token),  # not a webhook
        api.post(path, content=b"[1,", headers={"content-type": "application/json"}),
    ]
    details = {_problem(answer, 401)["detail"] for answer in refused}
    assert len(details) == 1, details  # nothing tells the cases apart

    rotated = _ok(api.post(f"/triggers/{hook['id']}/token"))["token"]
    _problem(api.post(path, json={"n": 1}, headers=token), 401)
    token = {TOKEN: rotated}
    json_headers = {**token, "content-type": "application/json"}
    _problem(api.post(path, json={"n": 1, "pad": "x" * 300}, headers=token), 413)
    _problem(api.post(path, content=b"[1,", headers=json_headers), 400)
    _problem(api.post(path, content=b"n=1", headers={**token, "content-type": "text/plain"}), 415)
    assert _fields(_problem(api.post(path, json=[1, 2], headers=token), 422)) == ["body"]
    missing_n = _problem(api.post(path, json={"m": 1}, headers={**token, "X-Agent": "t"}), 422)
    assert _fields(missing_n) == ["input_template"]
    _ok(api.patch(f"/triggers/{hook['id']}", json={"enabled": False}))
    _problem(api.post(path, json={"n": 1}, headers=token), 409)
    _ok(api.patch(f"/triggers/{hook['id']}", json={"enabled": True}))
    again = _ok(api.post(path, json={"n": 3}, headers={**token, "X-Agent": "u"}), 202)
    assert _scalar(session_factory, jobs, t=hook["id"]) == 2
    _until(lambda: _finished(api, again["job_id"]))


def test_a_repeated_idempotency_key_on_a_webhook_starts_one_job(
    api: httpx.Client, gateway: Gateway, workflow: dict[str, Any], session_factory: Any
) -> None:
    hook = _create(api, workflow, name="hook", kind="webhook")
    key = f"delivery-{uuid.uuid4().hex}"

    def call(number: int) -> httpx.Response:
        # headers differ per delivery (a tracing id); the key and the body name the request
        headers = {TOKEN: hook["token"], "Idempotency-Key": key, "X-Delivery": str(number)}
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            return client.post(hook["path"], json={"n": 5}, headers=headers)

    with ThreadPoolExecutor(max_workers=RACING_CALLS) as pool:
        answers = list(pool.map(call, range(RACING_CALLS)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * (RACING_CALLS - 1) + [202], [a.text for a in answers]
    assert len({a.json()["job_id"] for a in answers}) == 1
    assert [a.headers.get("Idempotent-Replayed") for a in answers].count("true") == 5
    jobs = "SELECT count(*) FROM job WHERE trigger_id = :t"
    assert _scalar(session_factory, jobs, t=hook["id"]) == 1

    headers = {TOKEN: hook["token"], "Idempotency-Key": key}
    other = _problem(api.post(hook["path"], json={"n": 6}, headers=headers), 422)
    assert _fields(other) == ["Idempotency-Key"]
    fresh = {TOKEN: hook["token"], "Idempotency-Key": key + "-2"}
    _ok(api.post(hook["path"], json={"n": 5}, headers=fresh), 202)
    assert _scalar(session_factory, jobs, t=hook["id"]) == 2


# -- manual ---------------------------------------------------------------------------------


def test_a_manual_trigger_fires_with_its_preset_and_overrides(
    api: httpx.Client, workflow: dict[str, Any], session_factory: Any
) -> None:
    button = _create(
        api, workflow, name="button", kind="manual", config={"input": {"n": 4, "region": "eu"}}
    )
    plain = _ok(api.post(f"/triggers/{button['id']}/fire"), 201)
    assert (plain["trigger"], plain["input"]) == ("manual", {"n": 4, "region": "eu"})
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    path = f"/triggers/{button['id']}/fire"
    first = _ok(api.post(path, json={"input": {"n": 6}}, headers=key), 201)
    assert first["input"] == {"n": 6, "region": "eu"}
    replayed = api.post(path, json={"input": {"n": 6}}, headers=key)
    assert _ok(replayed)["id"] == first["id"]
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert _fields(_problem(api.post(path, json={"input": {"n": 7}}, headers=key), 422)) == [
        "Idempotency-Key"
    ]
    _problem(api.post(path, json={"input": [1]}), 422)
    jobs = "SELECT count(*) FROM job WHERE trigger_id = :t"
    assert _scalar(session_factory, jobs, t=button["id"]) == 2

    hook = _create(api, workflow, name="hook", kind="webhook")
    assert "only manual ones" in _problem(api.post(f"/triggers/{hook['id']}/fire"), 409)["detail"]
    _ok(api.patch(f"/triggers/{button['id']}", json={"enabled": False}))
    assert "disabled" in _problem(api.post(path), 409)["detail"]
    _problem(api.post(f"/triggers/{uuid.uuid4()}/fire"), 404)
    assert _scalar(session_factory, jobs, t=button["id"]) == 2
