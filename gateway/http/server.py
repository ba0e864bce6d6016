"""``autostep gateway run``: serves the HTTP gateway on uvicorn until stopped.

Plain asyncio (no uvloop), httptools parsing HTTP, on
``AUTOSTEP_HTTP_HOST``:``AUTOSTEP_HTTP_PORT`` (127.0.0.1:8080 by default).
SIGTERM and Ctrl-C stop it gracefully: uvicorn finishes the requests in
flight.
"""

from __future__ import annotations

import logging

import uvicorn

from autostep.gateway.http.app import create_app
from autostep.settings import Settings, get_settings

__all__ = ["serve"]


def serve(settings: Settings | None = None) -> None:
    """Serve :func:`create_app` until SIGTERM or SIGINT."""
    settings = settings or get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(name)s %(message)s")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        loop="asyncio",
        http="httptools",
        lifespan="on",
        access_log=settings.http_access_log,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()
