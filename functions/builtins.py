"""The step functions every installation has: HTTP, CEL, log, delay and benchmarks.

They sit where user functions sit: the engine publishes a step message, the
``fn_<name>`` service built below by :func:`autostep.functions.service.services_for`
runs the function inside the step's transaction, and its output feeds the
next steps' conditions and mappings. ``nameko run autostep.functions.builtins`` (or
``autostep functions run autostep.functions.builtins``) serves all of them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autostep.conditions import evaluate
from autostep.exceptions import ConditionError, PermanentError, RetryableError
from autostep.functions.service import services_for
from autostep.sdk import function

__all__ = ["delay", "fibo", "http_request", "log", "noop", "transform"]

#: Characters of a response body kept in ``http_request``'s ``text``.
MAX_TEXT_CHARS = 1024 * 1024
#: The largest ``n`` ``fibo`` accepts: its naive recursion grows like 1.6**n.
MAX_FIBO_N = 30

_LOGGER = logging.getLogger("autostep.functions.log")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_ParamValue = str | int | float | bool | None
#: Request failures no retry fixes (a non-ASCII header value is a UnicodeEncodeError).
_BAD_REQUEST = (
    httpx.InvalidURL,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
    httpx.TooManyRedirects,
    UnicodeEncodeError,
)


class HttpRequestIn(BaseModel):
    """One HTTP request; ``json`` and ``body`` are mutually exclusive."""

    method: str = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, _ParamValue | list[_ParamValue]] = Field(default_factory=dict)
    json_body: Any | None = Field(default=None, alias="json")
    body: str | None = None
    timeout: float = Field(default=30.0, gt=0)
    #: Statuses that count as success; ``None`` means any 2xx.
    expect: list[int] | None = None

    @field_validator("method")
    @classmethod
    def _method_is_a_token(cls, value: str) -> str:
        if not value.isascii() or not value.isalpha():
            raise ValueError(f"method {value!r} is not an HTTP method")
        return value.upper()

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url {value!r} must be an absolute http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> HttpRequestIn:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give either json or body, not both")
        return self


class HttpRequestOut(BaseModel):
    """The response; ``json`` is set when the body is JSON."""

    model_config = ConfigDict(serialize_by_alias=True)

    status: int
    headers: dict[str, str]
    json_body: Any | None = Field(default=None, alias="json")
    text: str


@function(name="http_request", retries=3, backoff=1.0, timeout=60)
def http_request(inp: HttpRequestIn) -> HttpRequestOut:
    """Send the request; 5xx, 429 and network errors are retried, other failures not."""
    what = f"{inp.method} {inp.url}"
    try:
        response = httpx.request(
            inp.method,
            inp.url,
            headers=inp.headers,
            params=inp.params,
            json=inp.json_body,
            content=inp.body,
            timeout=inp.timeout,
            follow_redirects=True,
        )
    except _BAD_REQUEST as exc:
        raise PermanentError(f"{what}: invalid request: {type(exc).__name__}: {exc}") from exc
    except httpx.RequestError as exc:  # refused, reset, DNS, timeouts
        raise RetryableError(f"{what}: {type(exc).__name__}: {exc}") from exc
    _check_status(what, response, inp.expect)
    return HttpRequestOut(
        status=response.status_code,
        headers=dict(response.headers.items()),
        json=_json_of(response),
        text=response.text[:MAX_TEXT_CHARS],
    )


def _check_status(what: str, response: httpx.Response, expect: list[int] | None) -> None:
    status = response.status_code
    expected = 200 <= status < 300 if expect is None else status in expect
    if expected:
        return
    message = f"{what}: HTTP {status}: {response.text[:200]}"
    if status == 429 or status >= 500:
        retry_after = _retry_after(response) if status in (429, 503) else None
        raise RetryableError(message, delay=retry_after)
    raise PermanentError(message)


def _retry_after(response: httpx.Response) -> float | None:
    """A numeric ``Retry-After`` in seconds; HTTP dates are left to the backoff."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _json_of(response: httpx.Response) -> Any | None:
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        return None
    try:
        return response.json()
    except ValueError:  # invalid JSON or undecodable bytes
        return None


class TransformIn(BaseModel):
    """A CEL expression over ``data``, whose top-level keys are variables too."""

    expression: str
    data: dict[str, Any] = Field(default_factory=dict)


class TransformOut(BaseModel):
    result: Any = None


@function(name="transform", retries=0)
def transform(inp: TransformIn) -> TransformOut:
    """Evaluate the expression; ``data`` wins over a top-level key named ``data``."""
    variables = {**inp.data, "data": inp.data}
    try:
        result = evaluate(inp.expression, variables, field="transform.expression")
    except ConditionError as exc:  # does not compile: no retry will help
        raise PermanentError(str(exc)) from exc
    return TransformOut(result=result)


class LogIn(BaseModel):
    """A message and data to log; any other field is logged with the data."""

    model_config = ConfigDict(extra="allow")

    message: str = ""
    level: Literal["debug", "info", "warning", "error"] = "info"
    data: dict[str, Any] = Field(default_factory=dict)


class LogOut(BaseModel):
    logged: bool = True
    message: str
    data: dict[str, Any]


@function(name="log", retries=0)
def log(inp: LogIn) -> LogOut:
    """Log to ``autostep.functions.log``; the output echoes what was logged."""
    fields = {**inp.data, **(inp.model_extra or {})}
    rendered = json.dumps(fields, sort_keys=True, default=str)
    _LOGGER.log(_LEVELS[inp.level], "%s %s", inp.message, rendered, extra={"data": fields})
    return LogOut(message=inp.message, data=fields)


class DelayIn(BaseModel):
    """Seconds to wait; any other field is passed through."""

    model_config = ConfigDict(extra="allow")

    seconds: float = Field(ge=0, le=3600)


class DelayOut(BaseModel):
    slept: float
    passthrough: dict[str, Any]


@function(name="delay", retries=0, timeout=3700)
def delay(inp: DelayIn) -> DelayOut:
    """Sleep (cooperatively under nameko, whose eventlet patches ``time.sleep``)."""
    started = time.monotonic()
    time.sleep(inp.seconds)
    return DelayOut(slept=time.monotonic() - started, passthrough=dict(inp.model_extra or {}))


class NoopIn(BaseModel):
    model_config = ConfigDict(extra="allow")


class NoopOut(BaseModel):
    model_config = ConfigDict(extra="allow")


@function(name="noop", retries=0)
def noop(inp: NoopIn) -> NoopOut:
    """Return the input unchanged, without validating it again."""
    return NoopOut.model_construct(**(inp.model_extra or {}))


class FiboIn(BaseModel):
    n: int = Field(ge=0, le=MAX_FIBO_N)


class FiboOut(BaseModel):
    n: int
    value: int


@function(name="fibo", retries=0)
def fibo(inp: FiboIn) -> FiboOut:
    """The n-th Fibonacci number, computed naively: a fixed CPU cost per step."""
    return FiboOut(n=inp.n, value=_fib(inp.n))


def _fib(n: int) -> int:
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


globals().update(services_for(__name__))
