"""A gateway for the websocket tests: the ``/ws`` router and its events hub on uvicorn.

``python -m tests.e2e.live_app PORT`` serves it on 127.0.0.1:PORT with the
environment's ``AUTOSTEP_DATABASE_URL`` and ``AUTOSTEP_AMQP_URI``. It runs
in a process of its own: the test process is patched by eventlet, which
breaks asyncio servers.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from autostep.gateway.live import events_hub, router


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with events_hub(app):
        yield


app = FastAPI(lifespan=lifespan)
app.include_router(router)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(message)s")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
