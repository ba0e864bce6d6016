"""Checks the REST gateway's tests share: a 2xx answer's body, a problem's, a state awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

PROBLEM = "application/problem+json"
#: Seconds a test waits for a run to reach a state.
RUN_TIMEOUT = 60.0


def _until(condition: Callable[[], Any], timeout: float = RUN_TIMEOUT) -> Any:
    """The first true value of ``condition()``, polled every 0.1 s; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)
    return value


def _ok(response: httpx.Response, status: int = 200) -> Any:
    """The body of an answer that must have ``status``."""
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The problem details of an answer that must be a ``status`` problem, with no leak."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert "Traceback" not in response.text and "SELECT" not in response.text
    return problem
