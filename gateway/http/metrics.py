"""``/metrics`` for Prometheus: requests and their latency, per route and status.

:class:`RequestMetrics` (ASGI middleware) counts each HTTP request in
``autostep_http_requests_total`` and times it in
``autostep_http_request_duration_seconds``, labelled with the method, the
route's path template (``/jobs/{job_id}``, never the ids, so the series stay
few; ``unmatched`` for unknown paths) and the status. ``/metrics`` serves
the process's default registry in the text format, so other gateway modules
(the websocket's connections and forwarded events) add their own metrics by
registering them there.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REQUESTS", "REQUEST_SECONDS", "RequestMetrics", "router"]

REQUESTS = Counter(
    "autostep_http_requests",
    "HTTP requests answered by the gateway.",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "autostep_http_request_duration_seconds",
    "Seconds from a request's arrival to the end of its answer.",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics() -> Response:
    """The gateway's metrics in Prometheus' text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware: counts and times every HTTP request (see the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            REQUESTS.labels(method, route, str(status)).inc()
            REQUEST_SECONDS.labels(method, route).observe(time.perf_counter() - started)
