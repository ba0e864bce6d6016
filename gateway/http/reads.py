"""Hot reads on the gateway's event loop: psycopg's asyncio connections, no thread hop.

Most endpoints are synchronous: FastAPI hands each request to a worker
thread, which costs about as much CPU as a small request itself. The reads
that a grid or a poller sends many times a second (``GET /jobs/{id}``) run
here instead, as ``async`` code on a small pool of autocommit connections
(``psycopg_pool``; each statement has its own snapshot, as in a
read-committed transaction). The SQL is the core's own statement
(:data:`autostep.queries.JOB_TREE_STATEMENT`), compiled once for psycopg,
and its rows go through the same function as the synchronous read
(:func:`autostep.queries.job_tree_from_rows`), so both answer alike.

The pool opens with the app and does not wait for the database: a gateway
that starts while PostgreSQL is down serves anyway and answers 503 (a
psycopg ``OperationalError``, which ``PoolTimeout`` is) until it is back.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.sql import Select

from autostep import queries
from autostep.settings import Settings, libpq_dsn

__all__ = ["POOL_TIMEOUT", "AsyncReads", "CompiledRead"]

#: Seconds a read waits for a connection (or for the database to answer at all).
POOL_TIMEOUT = 5.0


class CompiledRead:
    """A SQLAlchemy statement as psycopg's SQL text and its fixed parameters."""

    def __init__(self, statement: Select[Any]) -> None:
        compiled = statement.compile(dialect=psycopg_dialect.dialect())
        self.sql = str(compiled)
        #: the statement's own literals (a status it compares with)
        self.fixed = dict(compiled.params)

    def params(self, **values: Any) -> dict[str, Any]:
        return {**self.fixed, **values}


_JOB_TREE = CompiledRead(queries.JOB_TREE_STATEMENT)


class AsyncReads:
    """The gateway's pool of async autocommit connections, and the reads that use it."""

    def __init__(self, settings: Settings) -> None:
        self.pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            libpq_dsn(settings.database_url),
            min_size=4,
            max_size=settings.db_pool_size,
            timeout=POOL_TIMEOUT,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": 5},
        )

    async def open(self) -> None:
        """Start the pool without waiting for the database."""
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    async def job_tree(self, job_id: uuid.UUID) -> dict[str, Any] | None:
        """:func:`autostep.queries.job_tree` in one statement; None for a job with a fan-out.

        :class:`~autostep.exceptions.NotFoundError` when there is no such job.
        A job with a fan-out needs more reads (its children's pages): the
        caller reads it with :func:`autostep.queries.job_tree`.
        """
        async with self.pool.connection() as connection:
            cursor = connection.cursor(row_factory=namedtuple_row)
            await cursor.execute(_JOB_TREE.sql, _JOB_TREE.params(job_id=job_id))
            rows = await cursor.fetchall()
        return queries.job_tree_from_rows(rows, job_id)
