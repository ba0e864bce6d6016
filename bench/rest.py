"""HTTP gateway benchmark: REST throughput beside a bare uvicorn "hello" baseline.

``.venv/bin/python bench/rest.py [--seconds 5] [--clients 16]``

In its own database (see :mod:`bench.resources`), it starts ``autostep
gateway run`` and, as the baseline, a bare uvicorn app that answers
``{"status": "ok"}`` with the same server settings (asyncio, h11, one
worker). A load driver in another process (:mod:`bench.http_load`) then
measures, one after another: GET of the baseline, GET ``/jobs/{id}`` (a job
with two processes) and POST ``/workflows/{id}/jobs`` (a job start: a
transaction with the job, its first process and outbox rows). No relay or
runner runs, so starts only accumulate. Target: GET ≥ 1,000 requests/s on
2 cores. A script, not a test: it exits 0 whether the target is met or not.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import row, say, section, verdict
from bench.resources import ROOT, Platform, bench_platform

HELLO = """
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def hello(request):
    return JSONResponse({"status": "ok"})

app = Starlette(routes=[Route("/hello", hello)])
uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), loop="asyncio",
            log_level="warning", access_log=False)
"""

GET_TARGET = 1000.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait(url: str, plat: Platform, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        plat.check_alive()
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def _load(url: str, seconds: float, clients: int, post: str | None = None) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.http_load", url, "--seconds", str(seconds)]
    command += ["--clients", str(clients)] + (["--post", post] if post is not None else [])
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def _show(label: str, figures: dict[str, float], note: str = "") -> None:
    value = f"{figures['per_second']:,.0f} req/s"
    latency = f"p50 {figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms"
    errors = f", {figures['errors']:.0f} errors" if figures["errors"] else ""
    row(label, value, f"{latency}{errors}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    args = parser.parse_args()
    with bench_platform() as plat:
        hello_port, api_port = _free_port(), _free_port()
        os.environ["AUTOSTEP_HTTP_PORT"] = str(api_port)
        plat.spawn("hello", "-c", HELLO, str(hello_port))
        plat.spawn_autostep("gateway", "gateway", "run")
        api = f"http://127.0.0.1:{api_port}"
        _wait(f"http://127.0.0.1:{hello_port}/hello", plat)
        _wait(f"{api}/healthz", plat)
        with httpx.Client(base_url=api, timeout=30) as client:
            project = client.post("/projects", json={"name": "bench"}).json()
            definition = {
                "name": "bench",
                "steps": [
                    {"name": "a", "function": "noop", "next": [{"to": "b"}]},
                    {"name": "b", "function": "noop"},
                ],
            }
            published = client.post(f"/projects/{project['id']}/workflows", json=definition)
            workflow = published.json()["workflow"]["id"]
            job = client.post(f"/workflows/{workflow}/jobs", json={"input": {"n": 1}}).json()

        section(
            f"HTTP gateway ({os.cpu_count()} cores, {args.clients} clients, {args.seconds} s each)"
        )
        hello = _load(f"http://127.0.0.1:{hello_port}/hello", args.seconds, args.clients)
        _show("baseline: bare uvicorn GET /hello", hello)
        get = _load(f"{api}/jobs/{job['id']}", args.seconds, args.clients)
        _show(
            "GET /jobs/{id}",
            get,
            f"; target ≥ {GET_TARGET:,.0f}: {verdict(get['per_second'] >= GET_TARGET)}",
        )
        start = _load(
            f"{api}/workflows/{workflow}/jobs",
            args.seconds,
            args.clients,
            json.dumps({"input": {}}),
        )
        _show("POST /workflows/{id}/jobs (start a job)", start)
        say()


if __name__ == "__main__":
    main()
