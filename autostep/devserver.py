"""``autostep dev``: the whole platform on one machine, for trying it out.

Creates the database if it is missing, migrates it, starts the relay, the
built-in function runner, the HTTP gateway, the gateway's RPC services and
the local scheduler (``autostep scheduler run`` with
``AUTOSTEP_SCHEDULER_BACKEND=local``: cron triggers fire in it) as child
processes, publishes ``examples/demo.yaml`` and follows one run of it,
prints the URLs of the REST API, its docs and the web UI once the gateway
answers there, then keeps the platform running until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import yaml
from sqlalchemy.engine import make_url

from autostep.catalog import create_project, publish_workflow
from autostep.db import make_engine, make_session_factory, unit_of_work
from autostep.exceptions import ConflictError, JobStillRunning
from autostep.migrate import upgrade
from autostep.queries import wait_for_job
from autostep.runs import start_job
from autostep.settings import get_settings, libpq_dsn

__all__ = ["run_dev"]

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.yaml"
PROCESSES = {
    "relay": ["relay"],
    "functions": ["functions", "run", "autostep.functions.builtins"],
    "gateway": ["gateway", "run"],
    "gateway-rpc": ["gateway", "rpc"],
    "scheduler": ["scheduler", "run"],
}
#: Settings of one child beyond the environment's.
CHILD_ENV = {"scheduler": {"AUTOSTEP_SCHEDULER_BACKEND": "local"}}
#: Seconds the HTTP gateway has to answer before its URLs are shown.
HTTP_WAIT_SECONDS = 60.0
#: Asks the local gateway directly, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def run_dev(*, demo: bool = True) -> int:
    """Run the local platform until interrupted; returns the exit code."""
    signal.signal(signal.SIGTERM, _interrupt)
    settings = get_settings()
    _create_database(settings.database_url)
    upgrade(settings.database_url)
    children = {
        name: subprocess.Popen(
            [sys.executable, "-m", "autostep.cli", *args],
            env={**os.environ, **CHILD_ENV.get(name, {})},
        )
        for name, args in PROCESSES.items()
    }
    print(
        "autostep: started",
        ", ".join(f"{n} (pid {p.pid})" for n, p in children.items()),
        flush=True,
    )
    url = f"http://{settings.http_host}:{settings.http_port}"
    try:
        if demo:
            _run_demo()
        if _answers(f"{url}/healthz", HTTP_WAIT_SECONDS):
            print(f"autostep: REST API at {url}/ (docs: {url}/docs)", flush=True)
            print(f"autostep: web UI at {url}/ui/", flush=True)
        else:
            print(
                f"autostep: the HTTP gateway does not answer at {url}/ after"
                f" {HTTP_WAIT_SECONDS:.0f} s; see its log above",
                file=sys.stderr,
                flush=True,
            )
        print("autostep: platform running; Ctrl-C stops it", flush=True)
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.5)
        failed = [name for name, child in children.items() if child.poll() is not None]
        print(f"autostep: {', '.join(failed)} exited; stopping", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children.values():
            child.terminate()
        for child in children.values():
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def _answers(url: str, timeout: float) -> bool:
    """Whether ``url`` answers 200 within ``timeout`` seconds (the URLs are shown only then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with _DIRECT.open(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:  # not listening yet (URLError is an OSError)
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _create_database(url: str) -> None:
    parsed = make_url(url)
    admin = parsed.set(database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(libpq_dsn(admin), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{parsed.database}"')


def _run_demo() -> None:
    factory = make_session_factory(make_engine())
    definition: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    with unit_of_work(factory) as session:
        with contextlib.suppress(ConflictError):
            create_project(session, "demo", "created by autostep dev")
        version = publish_workflow(session, "demo", definition)
        job = start_job(session, "demo", "demo", {"n": 12}, trigger="cli")
    print(f"autostep: published demo version {version.number}; started job {job.id}", flush=True)
    try:
        view = wait_for_job(factory, job.id, timeout=60)
    except JobStillRunning:
        print("autostep: the demo job did not finish within 60 s", file=sys.stderr, flush=True)
        return
    steps = ", ".join(f"{p['step']}:{p['status']}" for p in view["processes"])
    print(f"autostep: demo job {view['status']}: {steps}", flush=True)
    print(f"autostep: output {json.dumps(view['output'])}", flush=True)
    print(f"autostep: follow any run with: autostep run status {job.id} --follow", flush=True)
