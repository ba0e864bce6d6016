"""``autostep dev`` (what ``./dev up`` runs): the whole platform and the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from tests.e2e.conftest import REPO_ROOT, autostep_command, free_port, http_ok

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in found.stdout.split()]


def test_dev_runs_the_platform_and_the_demo_then_stops_cleanly(
    platform_env: dict[str, str],
) -> None:
    port = free_port()
    dev = subprocess.Popen(
        autostep_command("dev"),
        cwd=REPO_ROOT,
        env={**os.environ, **platform_env, "AUTOSTEP_HTTP_PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert dev.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(dev.stdout or ()), daemon=True)
    reader.start()
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and not any("REST API at" in x for x in lines):
            time.sleep(0.05)
        # shown only once it answers: a newcomer may open it at once
        docs_served = http_ok(f"http://127.0.0.1:{port}/docs")
        while time.monotonic() < deadline and not any("platform running" in x for x in lines):
            time.sleep(0.2)
        children = _children(dev.pid)
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=30)
    output = "".join(lines)

    assert "platform running" in output, output
    assert "demo job succeeded" in output, output
    for step in ("seed:succeeded", "fan_out:succeeded", "total:succeeded", "report:succeeded"):
        assert step in output, output
    assert '"values": [144, 233, 377]' in output  # fibo(12), fibo(13), fibo(14)
    url = f"http://127.0.0.1:{port}"
    assert f"REST API at {url}/ (docs: {url}/docs)" in output, output
    assert f"web UI at {url}/ui/" in output, output
    assert docs_served
    assert "scheduler (pid" in output, output
    # relay, functions, the HTTP gateway, the RPC gateway, the local scheduler
    assert len(children) == 5
    deadline = time.monotonic() + 5  # dev waited for them; give the kernel a moment
    while [pid for pid in children if os.path.exists(f"/proc/{pid}")]:
        assert time.monotonic() < deadline, "children left"
        time.sleep(0.05)
