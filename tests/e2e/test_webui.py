"""The gateway serves the built web UI at ``/ui/`` beside the API, without Node.

``/`` redirects to the app; a deep link (``/ui/jobs/<id>``) answers the
app's page so its router draws it; the build's assets are served; the API
paths, ``/docs``, ``/openapi.json``, ``/metrics`` and the health probes
answer as before, and an unknown API path is still a 404 problem, not the
app's page.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

pytestmark = pytest.mark.e2e


def test_the_gateway_serves_the_app_and_its_deep_links(api: httpx.Client) -> None:
    root = api.get("/", follow_redirects=False)
    assert root.status_code == 307
    assert root.headers["location"] == "/ui/"

    page = api.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<div id="root">' in page.text
    assert page.headers["cache-control"] == "no-cache"
    script = api.get("/ui/assets/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]

    for deep_link in (f"/ui/jobs/{uuid.uuid4()}", "/ui/runs?project=x", "/ui/projects/a/b"):
        answer = api.get(deep_link)
        assert answer.status_code == 200, deep_link
        assert answer.text == page.text, deep_link


def test_api_paths_keep_working_beside_the_app(api: httpx.Client) -> None:
    assert api.get("/projects").headers["content-type"] == "application/json"
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/openapi.json").json()["info"]["title"] == "autostep"
    assert api.get("/docs").status_code == 200
    assert api.get("/metrics").status_code == 200
    missing = api.get(f"/jobs/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    unknown = api.get("/no-such-path")
    assert unknown.status_code == 404
    assert "text/html" not in unknown.headers["content-type"]
    # the app is no API: its paths are not in the OpenAPI document
    assert not any(
        path.startswith("/ui") or path == "/" for path in api.get("/openapi.json").json()["paths"]
    )
