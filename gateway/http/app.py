"""The HTTP gateway's FastAPI app: REST resources, problem details, health, OpenAPI and docs.

:func:`create_app` builds the app from the settings: one session factory
for the process (each endpoint opens its own unit of work with it), the
routers of :mod:`autostep.gateway.http.routes` and the websocket ``/ws`` of
the live grid (:mod:`autostep.gateway.live`, its events hub started and
stopped with the app), errors as problem details
(:mod:`autostep.gateway.http.problems`), body limits
(:mod:`autostep.gateway.http.limits`), ``/metrics`` for Prometheus
(:mod:`autostep.gateway.http.metrics`), ``/healthz`` (the process answers)
and ``/readyz`` (the database and the broker answer, each within
:data:`PROBE_TIMEOUT` seconds), ``/openapi.json`` (OpenAPI 3.1) and
``/docs``, whose Swagger UI comes from the ``fastapi-offline`` package,
not from a CDN, and the web UI at ``/ui/`` (:mod:`autostep.gateway.http.webui`).
Endpoints are synchronous and call the core as the RPC service does;
FastAPI runs them in its thread pool. The hottest read
(``GET /jobs/{id}``) runs on the event loop instead, on a pool of async
connections (:mod:`autostep.gateway.http.reads`). This process never
imports eventlet or nameko (an import contract checks it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

import amqp
from anyio import to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from autostep.db import database_answers, make_engine, make_session_factory
from autostep.gateway import live
from autostep.gateway.http import metrics
from autostep.gateway.http.limits import BodyLimits
from autostep.gateway.http.metrics import RequestMetrics
from autostep.gateway.http.problems import (
    Problem,
    install_problem_handlers,
    problem_response,
    problem_responses,
)
from autostep.gateway.http.reads import AsyncReads
from autostep.gateway.http.routes import (
    drafts,
    functions,
    hooks,
    jobs,
    projects,
    triggers,
    workflows,
)
from autostep.gateway.http.webui import install_web_ui
from autostep.gateway.live import events_hub
from autostep.settings import Settings, amqp_params, get_settings

__all__ = ["PROBE_TIMEOUT", "create_app"]

#: Seconds ``/readyz`` waits for each server.
PROBE_TIMEOUT = 2.0

DESCRIPTION = """\
Projects, workflows and their versions, the function registry, CEL
conditions, jobs (start, list, follow, cancel and rerun), and triggers:
cron schedules, webhooks (`POST /hooks/{id}` with the `X-Autostep-Token`
header) and manual starts. Errors are RFC 9457 problem details
(`application/problem+json`)."""


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    database: bool
    broker: bool


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway's app for ``settings`` (default: the environment's)."""
    settings = settings or get_settings()
    engine = make_engine(settings)
    reads = AsyncReads(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # As many endpoint threads as pooled connections: further requests wait
        # their turn in the event loop instead of holding a thread that waits
        # for a connection.
        to_thread.current_default_thread_limiter().total_tokens = 2 * settings.db_pool_size
        await reads.open()
        try:
            async with events_hub(app):
                yield
        finally:
            await reads.close()
            engine.dispose()

    app = FastAPIOffline(
        title="autostep",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.sessions = make_session_factory(engine)
    app.state.reads = engine.execution_options(isolation_level="AUTOCOMMIT")
    app.state.async_reads = reads
    # routes are matched in order: the jobs, read most often, first
    for module in (jobs, projects, workflows, drafts, functions, triggers, hooks):
        app.include_router(module.router)
    app.include_router(live.router)
    app.include_router(metrics.router)
    install_problem_handlers(app)
    app.add_middleware(BodyLimits, max_bytes=settings.max_payload_bytes)
    app.add_middleware(RequestMetrics)
    _health(app, settings)
    install_web_ui(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _version() -> str:
    try:
        return metadata.version("autostep")
    except metadata.PackageNotFoundError:
        return "unreleased"


def _health(app: FastAPI, settings: Settings) -> None:
    @app.get("/healthz", tags=["operations"])
    def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/readyz", tags=["operations"], responses=problem_responses(503))
    def readyz() -> Any:
        """Readiness: the database and the broker each answer within 2 s."""
        ready = Readiness(
            database=database_answers(settings.database_url, timeout=PROBE_TIMEOUT),
            broker=_broker_answers(settings.amqp_uri),
        )
        if ready.database and ready.broker:
            return ready
        down = [name for name, up in ready.model_dump().items() if not up]
        return problem_response("/readyz", 503, "not-ready", f"not reachable: {', '.join(down)}")


def _broker_answers(uri: str) -> bool:
    """Whether RabbitMQ at ``uri`` completes an AMQP handshake within :data:`PROBE_TIMEOUT`."""
    connection = amqp.Connection(**amqp_params(uri, timeout=PROBE_TIMEOUT))
    try:
        connection.connect()
    except (OSError, amqp.exceptions.AMQPError):
        return False
    finally:
        with contextlib.suppress(Exception):  # a half-open connection may fail any way
            connection.collect()
    return True


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the problem details schema its error answers refer to."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(
            Problem.model_json_schema(ref_template="#/components/schemas/{model}")["$defs"]
        )
        components["Problem"] = {
            k: v
            for k, v in Problem.model_json_schema(
                ref_template="#/components/schemas/{model}"
            ).items()
            if k != "$defs"
        }
        app.openapi_schema = schema
    return app.openapi_schema
