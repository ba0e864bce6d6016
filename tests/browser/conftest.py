"""Browser-test fixtures: the platform as subprocesses, Chromium through Playwright.

These tests run in a pytest process of their own (``pytest -c
tests/browser/pytest.ini tests/browser``, which ``./dev test`` runs after
the main suite), never patched by eventlet: Playwright's synchronous API runs
its own event loop. The session gets a database and a vhost of its own (the
fixtures of ``tests/conftest.py``) and starts ``autostep relay``, ``autostep
functions run`` (the built-ins and ``tests.stepfuncs``) and ``autostep gateway
run`` as subprocesses, as the end-to-end tests do. The browser is Debian's
``chromium`` (``AUTOSTEP_CHROMIUM`` overrides the path); Playwright never
downloads one. Screenshots of each page, in the light and the dark theme, go
to ``tests/browser/artifacts/``, and each page is checked by axe-core in both
themes for serious and critical violations.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import (  # the session's own database and vhost
    amqp_uri,
    database_url,
    in_ci,
    platform_env,
    server_urls,
)
from tests.e2e.conftest import (
    RUNNER_MODULES,
    ManagedProcess,
    autostep_command,
    free_port,
    http_answers,
    relay_holds_membership,
    runner_connected,
)

__all__ = ["amqp_uri", "database_url", "platform_env", "server_urls", "snapshot"]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("AUTOSTEP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
#: axe-core impacts that fail a page.
BLOCKING = ("serious", "critical")


#: Creates the tables of ``tests.stepfuncs`` (importing it imports eventlet: not here).
_EFFECT_TABLES = """
import psycopg, sys
from autostep.settings import libpq_dsn
from tests.stepfuncs import EFFECT_TABLE
with psycopg.connect(libpq_dsn(sys.argv[1]), autocommit=True) as conn:
    conn.execute(EFFECT_TABLE)
"""


@pytest.fixture(scope="session")
def platform(
    platform_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Relay, function runner and HTTP gateway of this session; the gateway's URL."""
    logs = tmp_path_factory.mktemp("platform")
    env = {**os.environ, **platform_env, "PYTHONUNBUFFERED": "1"}
    subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-c",
            _EFFECT_TABLES,
            platform_env["AUTOSTEP_DATABASE_URL"],
        ],
        env=env,
        check=True,
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    processes = [
        ManagedProcess(
            "relay",
            autostep_command("relay"),
            env,
            logs / "relay.log",
            relay_holds_membership(platform_env["AUTOSTEP_DATABASE_URL"]),
        ),
        ManagedProcess(
            "runner",
            autostep_command("functions", "run", *RUNNER_MODULES),
            env,
            logs / "runner.log",
            runner_connected,
        ),
        ManagedProcess(
            "gateway",
            autostep_command("gateway", "run"),
            {**env, "AUTOSTEP_HTTP_PORT": str(port)},
            logs / "gateway.log",
            http_answers(f"{url}/healthz"),
        ),
    ]
    try:
        for process in processes:
            process.start()
        yield url
    finally:
        for process in processes:
            process.close()


@pytest.fixture(scope="session")
def api(platform: str) -> Iterator[httpx.Client]:
    """An HTTP client of the gateway, for setting up and checking what the UI did."""
    with httpx.Client(base_url=platform, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM}: install Debian's chromium (./dev does as root)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, platform: str) -> Iterator[Page]:
    context = browser.new_context(base_url=platform, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"errors in the page: {errors}"


def snapshot(page: Page, name: str) -> None:
    """Screenshots of ``page`` in the light and dark themes; fail on serious axe findings in either.

    The screenshots go to ``artifacts/<name>.png`` and ``artifacts/<name>-dark.png``; the
    dark theme is the system's (``prefers-color-scheme: dark``), which the page follows
    unless a theme was chosen in its header.
    """
    from axe_playwright_python.sync_playwright import Axe

    ARTIFACTS.mkdir(exist_ok=True)
    blocking: list[str] = []
    for scheme, suffix in (("light", ""), ("dark", "-dark")):
        page.emulate_media(color_scheme=scheme)
        page.screenshot(path=str(ARTIFACTS / f"{name}{suffix}.png"), full_page=True)
        results: Any = Axe().run(page)
        blocking += [
            f"{scheme}: {v['id']} ({v['impact']}): {v['help']} at "
            f"{[n['target'] for n in v['nodes']][:3]}"
            for v in results.response["violations"]
            if v.get("impact") in BLOCKING
        ]
    page.emulate_media(color_scheme="light")
    assert not blocking, f"accessibility of {name}: " + "; ".join(blocking)
