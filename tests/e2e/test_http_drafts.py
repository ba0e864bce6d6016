"""A workflow's draft over real HTTP: edited piece by piece with ETags, then published.

- A draft edited step by step (steps and transitions added, moved, changed,
  deleted), published as the next version and run.
- Two editors: a write with a stale ``If-Match`` gets 412 and changes
  nothing; of many writes sent at once with the same ETag exactly one wins;
  a write without ``If-Match`` gets 428.
- Publishing an invalid draft gets 422 naming the field and stores no version.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ManagedProcess

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"
#: Seconds a test waits for a run to finish.
RUN_TIMEOUT = 60.0
#: Writes sent at once with the same ETag.
RACING_WRITES = 8


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert "Traceback" not in response.text and "SELECT" not in response.text
    return problem


def _etag(response: httpx.Response) -> str:
    etag: str = response.headers["etag"]
    return etag


@pytest.fixture
def workflow(api: httpx.Client) -> dict[str, Any]:
    """A workflow of one step, ``first`` (``fibo``), published over REST."""
    project = _ok(api.post("/projects", json={"name": f"drafts-{uuid.uuid4().hex[:8]}"}), 201)
    definition = {"name": "edited", "steps": [{"name": "first", "function": "fibo"}]}
    created = _ok(api.post(f"/projects/{project['id']}/workflows", json=definition), 201)
    found: dict[str, Any] = created["workflow"]
    return found


def _versions(api: httpx.Client, workflow: dict[str, Any]) -> list[int]:
    return [v["number"] for v in _ok(api.get(f"/workflows/{workflow['id']}/versions"))]


def test_a_draft_edited_step_by_step_is_published_and_runs(
    api: httpx.Client,
    workflow: dict[str, Any],
    relay_process: ManagedProcess,
    runner_process: ManagedProcess,
) -> None:
    base = f"/workflows/{workflow['id']}/draft"
    read = api.get(base)
    draft = _ok(read)
    assert (draft["revision"], _etag(read)) == (1, '"1"')
    assert [s["name"] for s in draft["definition"]["steps"]] == ["first"]

    etag = _etag(read)
    #: Each edit, and the steps of the draft after it: (name, targets of its transitions).
    edits: list[tuple[str, str, dict[str, Any] | None, int, list[tuple[str, list[str]]]]] = [
        (
            "POST",
            "/steps",
            {"name": "second", "function": "noop"},
            201,
            [("first", []), ("second", [])],
        ),
        (
            "POST",
            "/steps",
            {"name": "third", "function": "fibo", "input": {"n": "prev.n"}},
            201,
            [("first", []), ("second", []), ("third", [])],
        ),
        (
            "POST",
            "/steps/first/transitions",
            {"to": "second"},
            201,
            [("first", ["second"]), ("second", []), ("third", [])],
        ),
        (
            "POST",
            "/steps/third/move",
            {"position": 1},
            200,
            [("first", ["second"]), ("third", []), ("second", [])],
        ),
        (
            "PUT",
            "/steps/first/transitions/0",
            {"to": "third"},
            200,
            [("first", ["third"]), ("third", []), ("second", [])],
        ),
        (
            "PUT",
            "/steps/third",
            {"name": "third", "function": "fibo", "input": {"n": "prev.n + 2"}},
            200,
            [("first", ["third"]), ("third", []), ("second", [])],
        ),
        ("DELETE", "/steps/second", None, 200, [("first", ["third"]), ("third", [])]),
    ]
    for revision, (method, path, body, status, steps) in enumerate(edits, start=2):
        answer = api.request(method, base + path, json=body, headers={"If-Match": etag})
        draft = _ok(answer, status)
        assert draft["revision"] == revision, (method, path)
        assert [
            (s["name"], [t["to"] for t in s["next"]]) for s in draft["definition"]["steps"]
        ] == steps, (method, path)
        etag = _etag(answer)
        assert etag == f'"{revision}"'
    _problem(api.post(base + "/steps", json={"name": "late", "function": "noop"}), 428)

    edited = _ok(api.get(base))["definition"]
    assert [s["name"] for s in edited["steps"]] == ["first", "third"]
    assert edited["steps"][0]["next"] == [{"to": "third"}]
    assert edited["steps"][1]["input"] == {"n": "prev.n + 2"}

    publishing = api.post(base + "/publish", headers={"If-Match": etag})
    published = _ok(publishing, 201)
    assert published["version"]["number"] == 2
    stored = _ok(api.get(f"/workflows/{workflow['id']}/versions/2"))
    assert published["draft"]["definition"] == stored["definition"]
    assert _etag(publishing) == f'"{published["draft"]["revision"]}"'
    assert _versions(api, workflow) == [1, 2]

    job = _ok(api.post(f"/workflows/{workflow['id']}/jobs", json={"input": {"n": 10}}), 201)
    deadline = time.monotonic() + RUN_TIMEOUT
    while (job := _ok(api.get(f"/jobs/{job['id']}")))["status"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert [p["step"] for p in job["processes"]] == ["first", "third"]
    assert job["output"] == {"n": 12, "value": 144}


def test_a_write_with_a_stale_etag_gets_412_and_changes_nothing(
    api: httpx.Client, workflow: dict[str, Any]
) -> None:
    base = f"/workflows/{workflow['id']}/draft"
    stale = _etag(api.get(base))  # both editors read the draft
    first = api.post(
        base + "/steps", json={"name": "by_a", "function": "noop"}, headers={"If-Match": stale}
    )
    after_a = _ok(first, 201)

    second = {"If-Match": stale}
    writes = [
        api.post(base + "/steps", json={"name": "by_b", "function": "noop"}, headers=second),
        api.put(base + "/steps/first", json={"name": "first", "function": "noop"}, headers=second),
        api.post(base + "/steps/by_a/move", json={"position": 0}, headers=second),
        api.delete(base + "/steps/by_a", headers=second),
        api.post(base + "/steps/first/transitions", json={"to": "by_a"}, headers=second),
        api.put(
            base,
            json={"name": "edited", "steps": [{"name": "x", "function": "noop"}]},
            headers=second,
        ),
        api.post(base + "/publish", headers=second),
    ]
    for answer in writes:
        problem = _problem(answer, 412)
        assert "revision 2, not 1" in problem["detail"], problem
        assert _etag(answer) == '"2"'
    unchanged = api.get(base)
    assert _ok(unchanged) == after_a
    assert _etag(unchanged) == '"2"'
    assert _versions(api, workflow) == [1]

    current = _etag(unchanged)

    def add(index: int) -> int:
        body = {"name": f"racer_{index}", "function": "noop"}
        return api.post(base + "/steps", json=body, headers={"If-Match": current}).status_code

    with ThreadPoolExecutor(RACING_WRITES) as pool:
        statuses = sorted(pool.map(add, range(RACING_WRITES)))
    assert statuses == [201] + [412] * (RACING_WRITES - 1)
    raced = _ok(api.get(base))
    assert raced["revision"] == 3
    assert len([s for s in raced["definition"]["steps"] if s["name"].startswith("racer_")]) == 1


def test_publishing_an_invalid_draft_gets_422_naming_the_field_and_stores_nothing(
    api: httpx.Client, workflow: dict[str, Any]
) -> None:
    base = f"/workflows/{workflow['id']}/draft"
    etag = _etag(api.get(base))
    bad_step = api.post(
        base + "/steps", json={"name": "1st", "function": "noop"}, headers={"If-Match": etag}
    )
    assert [e["field"] for e in _problem(bad_step, 422)["errors"]] == ["name"]
    # a transition to a step not there yet is fine while editing
    answer = api.post(
        base + "/steps", json={"name": "later", "function": "noop"}, headers={"If-Match": etag}
    )
    etag = _etag(answer)
    answer = api.post(
        base + "/steps/later/transitions", json={"to": "missing"}, headers={"If-Match": etag}
    )
    etag = _etag(answer)
    assert _ok(answer, 201)["definition"]["steps"][1]["next"] == [{"to": "missing"}]

    problem = _problem(api.post(base + "/publish", headers={"If-Match": etag}), 422)
    assert [e["field"] for e in problem["errors"]] == ["steps[1].next[0].to"]
    assert "steps[1].next[0].to: no step named 'missing'" in problem["detail"]
    assert _versions(api, workflow) == [1]
    assert _etag(api.get(base)) == etag  # the draft is as it was
