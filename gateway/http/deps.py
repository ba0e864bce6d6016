"""Dependencies of the HTTP endpoints: the database sessions, from the app's state.

Each endpoint that writes opens one unit of work
(:func:`autostep.db.unit_of_work`) with the factory it is given and calls
the core inside it, so a request commits everything it wrote or nothing.
The commit happens before the answer is sent: an answer never reports a
write that did not commit. Reads take :data:`ReadDatabase` instead:
an engine whose connections autocommit, so a read sends no ``BEGIN`` and
``COMMIT`` around its statements (PostgreSQL gives each statement its own
snapshot either way, as in a read-committed transaction), and the core
reads rows on the connection without a session (:func:`autostep.queries.job_tree`).
The hottest reads run on the event loop with :func:`async_reads`
(:mod:`autostep.gateway.http.reads`).

The dependencies are ``async``, although they only read the app's state:
FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per request and dependency.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from autostep import idempotency
from autostep.gateway.http.reads import AsyncReads

__all__ = [
    "Database",
    "IdempotencyKey",
    "ReadDatabase",
    "async_reads",
    "database",
    "read_database",
]


async def database(request: Request) -> sessionmaker[Session]:
    """The app's session factory (made by :func:`autostep.gateway.http.app.create_app`)."""
    factory: sessionmaker[Session] = request.app.state.sessions
    return factory


#: An endpoint parameter holding the session factory.
Database = Annotated[sessionmaker[Session], Depends(database)]


async def read_database(request: Request) -> Engine:
    """The app's engine for reads: autocommit, no transaction around statements."""
    engine: Engine = request.app.state.reads
    return engine


#: An endpoint parameter holding the engine for reads.
ReadDatabase = Annotated[Engine, Depends(read_database)]


def async_reads(request: Request) -> AsyncReads:
    """The app's pool for reads on the event loop (called directly: no dependency to solve)."""
    reads: AsyncReads = request.app.state.async_reads
    return reads


#: An endpoint parameter: the ``Idempotency-Key`` header of a start (:mod:`autostep.idempotency`).
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        min_length=1,
        max_length=200,
        description="The same key (per workflow, for 24 h) starts one job; "
        "sent again it answers 200 with that job. With another body: 422.",
    ),
]
