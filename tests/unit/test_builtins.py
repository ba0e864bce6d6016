"""Unit tests of the built-in step functions, called through their FunctionSpec.

``http_request`` talks to a real HTTP server on 127.0.0.1 started here; nothing
needs PostgreSQL or RabbitMQ.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest.mock import MagicMock

import pytest

import autostep.functions.builtins as builtins
from autostep.exceptions import PermanentError, RetryableError
from autostep.sdk import REGISTRY, RetryPolicy, StepContext


@pytest.fixture
def context() -> StepContext:
    return StepContext(
        job_id=uuid.uuid4(),
        process_id=uuid.uuid4(),
        step="step",
        attempt=1,
        session=MagicMock(),
    )


def call(name: str, data: dict[str, Any], context: StepContext) -> dict[str, Any]:
    return REGISTRY[name].call(data, context)


# -- registration ----------------------------------------------------------


def test_every_builtin_is_registered_with_its_policy() -> None:
    assert REGISTRY["http_request"].policy == RetryPolicy(retries=3, backoff=1.0, timeout=60)
    assert REGISTRY["delay"].policy.timeout == 3700
    for name in ("transform", "log", "delay", "noop", "fibo"):
        assert REGISTRY[name].policy.retries == 0, name
        assert REGISTRY[name].func.__module__ == "autostep.functions.builtins"


def test_module_exposes_one_nameko_service_per_function() -> None:
    assert builtins.FiboService.name == "fn_fibo"  # type: ignore[attr-defined]
    assert builtins.HttpRequestService.name == "fn_http_request"  # type: ignore[attr-defined]
    names = {getattr(value, "name", None) for value in vars(builtins).values()}
    expected = {"fn_http_request", "fn_transform", "fn_log", "fn_delay", "fn_noop", "fn_fibo"}
    assert expected <= names


# -- fibo ------------------------------------------------------------------


@pytest.mark.parametrize(("n", "value"), [(0, 0), (1, 1), (2, 1), (10, 55), (20, 6765)])
def test_fibo(n: int, value: int, context: StepContext) -> None:
    assert call("fibo", {"n": n}, context) == {"n": n, "value": value}


@pytest.mark.parametrize("n", [31, -1])
def test_fibo_rejects_n_out_of_range(n: int, context: StepContext) -> None:
    with pytest.raises(PermanentError, match="input of 'fibo' is invalid"):
        call("fibo", {"n": n}, context)


# -- transform -------------------------------------------------------------


def test_transform_sees_data(context: StepContext) -> None:
    out = call("transform", {"expression": "data.a + data.b", "data": {"a": 2, "b": 3}}, context)
    assert out == {"result": 5}


def test_transform_sees_top_level_keys(context: StepContext) -> None:
    out = call("transform", {"expression": "a * 2", "data": {"a": 21}}, context)
    assert out == {"result": 42}


def test_transform_builds_structures(context: StepContext) -> None:
    data = {"items": [1, 2, 3], "name": "x"}
    out = call(
        "transform", {"expression": '{"n": size(items), "who": name}', "data": data}, context
    )
    assert out == {"result": {"n": 3, "who": "x"}}


def test_transform_syntax_error_is_permanent_and_names_the_expression(
    context: StepContext,
) -> None:
    with pytest.raises(PermanentError) as raised:
        call("transform", {"expression": "a +* 2", "data": {"a": 1}}, context)
    assert "transform.expression" in str(raised.value)
    assert "a +* 2" in str(raised.value)


def test_transform_missing_key_is_permanent(context: StepContext) -> None:
    with pytest.raises(PermanentError, match=r"transform\.expression"):
        call("transform", {"expression": "data.missing", "data": {}}, context)


# -- http_request ----------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {
        "/ok": (200, {"Content-Type": "application/json"}, b'{"hello": "world"}'),
        "/missing": (404, {"Content-Type": "text/plain"}, b"no such thing"),
        "/busy": (503, {"Retry-After": "7"}, b"come back later"),
        "/slow-down": (429, {"Retry-After": "2"}, b"too many"),
        "/boom": (500, {}, b"kaboom"),
        "/text": (200, {"Content-Type": "text/plain; charset=utf-8"}, b"plain"),
    }

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/echo":
            self._send(200, {"Content-Type": "application/json"}, self._echo(b""))
            return
        if path == "/slow":
            time.sleep(1.0)
        self._send(*self.routes.get(path, (404, {}, b"")))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._send(200, {"Content-Type": "application/json"}, self._echo(body))

    def _echo(self, body: bytes) -> bytes:
        seen = {
            "method": self.command,
            "path": self.path,
            "header": self.headers.get("X-Test"),
            "body": body.decode(),
        }
        return json.dumps(seen).encode()

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected here


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_http_ok_parses_json(server: str, context: StepContext) -> None:
    out = call("http_request", {"url": f"{server}/ok"}, context)
    assert out["status"] == 200
    assert out["json"] == {"hello": "world"}
    assert out["text"] == '{"hello": "world"}'
    assert out["headers"]["content-type"] == "application/json"


def test_http_non_json_body_is_text_only(server: str, context: StepContext) -> None:
    out = call("http_request", {"url": f"{server}/text"}, context)
    assert out["json"] is None
    assert out["text"] == "plain"


def test_http_sends_method_params_headers_and_json(server: str, context: StepContext) -> None:
    request = {
        "method": "post",
        "url": f"{server}/echo",
        "params": {"q": "1", "tags": ["a", "b"]},
        "headers": {"X-Test": "yes"},
        "json": {"k": [1, 2]},
    }
    seen = call("http_request", request, context)["json"]
    assert seen["method"] == "POST"
    assert seen["path"] == "/echo?q=1&tags=a&tags=b"
    assert seen["header"] == "yes"
    assert json.loads(seen["body"]) == {"k": [1, 2]}


def test_http_sends_a_raw_body(server: str, context: StepContext) -> None:
    request = {"method": "POST", "url": f"{server}/echo", "body": "raw text"}
    assert call("http_request", request, context)["json"]["body"] == "raw text"


def test_http_404_is_permanent(server: str, context: StepContext) -> None:
    with pytest.raises(PermanentError, match="HTTP 404"):
        call("http_request", {"url": f"{server}/missing"}, context)


def test_http_expect_makes_a_status_a_success(server: str, context: StepContext) -> None:
    out = call("http_request", {"url": f"{server}/missing", "expect": [404]}, context)
    assert out["status"] == 404
    assert out["text"] == "no such thing"


def test_http_200_outside_expect_is_permanent(server: str, context: StepContext) -> None:
    with pytest.raises(PermanentError, match="HTTP 200"):
        call("http_request", {"url": f"{server}/ok", "expect": [201]}, context)


def test_http_503_is_retryable_after_retry_after(server: str, context: StepContext) -> None:
    with pytest.raises(RetryableError, match="HTTP 503") as raised:
        call("http_request", {"url": f"{server}/busy"}, context)
    assert raised.value.delay == 7.0


def test_http_429_is_retryable_after_retry_after(server: str, context: StepContext) -> None:
    with pytest.raises(RetryableError, match="HTTP 429") as raised:
        call("http_request", {"url": f"{server}/slow-down"}, context)
    assert raised.value.delay == 2.0


def test_http_500_is_retryable_with_the_backoff(server: str, context: StepContext) -> None:
    with pytest.raises(RetryableError, match="HTTP 500") as raised:
        call("http_request", {"url": f"{server}/boom"}, context)
    assert raised.value.delay is None


def test_http_timeout_is_retryable(server: str, context: StepContext) -> None:
    with pytest.raises(RetryableError, match="Timeout"):
        call("http_request", {"url": f"{server}/slow", "timeout": 0.1}, context)


def test_http_refused_connection_is_retryable(context: StepContext) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RetryableError, match="ConnectError"):
        call("http_request", {"url": f"http://127.0.0.1:{port}/"}, context)


@pytest.mark.parametrize("url", ["ftp://x", "file:///etc/passwd", "http://", "example.com"])
def test_http_rejects_non_http_urls(url: str, context: StepContext) -> None:
    with pytest.raises(PermanentError, match="must be an absolute http"):
        call("http_request", {"url": url}, context)


def test_http_rejects_json_and_body_together(context: StepContext) -> None:
    request = {"url": "http://127.0.0.1/", "json": {}, "body": "x"}
    with pytest.raises(PermanentError, match="either json or body"):
        call("http_request", request, context)


def test_http_rejects_non_ascii_header_values(server: str, context: StepContext) -> None:
    request = {"url": f"{server}/ok", "headers": {"X-Test": "caf\u00e9"}}
    with pytest.raises(PermanentError, match="invalid request"):
        call("http_request", request, context)


# -- log -------------------------------------------------------------------


def test_log_logs_message_data_and_extra_fields(
    caplog: pytest.LogCaptureFixture, context: StepContext
) -> None:
    caplog.set_level(logging.DEBUG, logger="autostep.functions.log")
    data = {"message": "hello", "level": "warning", "data": {"a": 1}, "order": 7}
    out = call("log", data, context)
    assert out == {"logged": True, "message": "hello", "data": {"a": 1, "order": 7}}
    [record] = [r for r in caplog.records if r.name == "autostep.functions.log"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == 'hello {"a": 1, "order": 7}'
    assert record.__dict__["data"] == {"a": 1, "order": 7}


def test_log_defaults_to_info(caplog: pytest.LogCaptureFixture, context: StepContext) -> None:
    caplog.set_level(logging.INFO, logger="autostep.functions.log")
    assert call("log", {}, context) == {"logged": True, "message": "", "data": {}}
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_log_rejects_unknown_level(context: StepContext) -> None:
    with pytest.raises(PermanentError, match="level"):
        call("log", {"level": "loud"}, context)


# -- delay -----------------------------------------------------------------


def test_delay_sleeps_and_passes_extra_fields_through(context: StepContext) -> None:
    started = time.monotonic()
    out = call("delay", {"seconds": 0.01, "order": 7, "items": [1]}, context)
    assert time.monotonic() - started >= 0.01
    assert 0.005 <= out["slept"] < 1.0
    assert out["passthrough"] == {"order": 7, "items": [1]}


@pytest.mark.parametrize("seconds", [-1, 3601])
def test_delay_rejects_seconds_out_of_range(seconds: float, context: StepContext) -> None:
    with pytest.raises(PermanentError, match="input of 'delay' is invalid"):
        call("delay", {"seconds": seconds}, context)


# -- noop ------------------------------------------------------------------


def test_noop_echoes_its_input(context: StepContext) -> None:
    data = {"a": 1, "nested": {"b": [1, "two", None]}, "flag": True}
    assert call("noop", data, context) == data
    assert call("noop", {}, context) == {}
