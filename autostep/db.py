"""Engine and unit of work over SQLAlchemy 2 and psycopg 3.

Every write autostep makes goes through :func:`unit_of_work`: business rows and
the outbox rows announcing them commit together or not at all. What the
database's errors mean is decided here, in one place
(:func:`database_outages`): a deadlock or a serialization failure (SQLSTATE
40P01, 40001) becomes :class:`~autostep.exceptions.TransactionConflict`, which
the function runners answer by running the transaction again at once; losing
the database becomes :class:`~autostep.exceptions.DatabaseUnavailable`, which
the runners answer by holding the message until :func:`database_answers`, and
the relay by reconnecting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from autostep.cooperative import make_psycopg_cooperative
from autostep.exceptions import DatabaseUnavailable, TransactionConflict
from autostep.settings import Settings, get_settings, libpq_dsn

__all__ = [
    "DATABASE_OUTAGES",
    "TRANSACTION_CONFLICTS",
    "database_answers",
    "database_outages",
    "discard_connection",
    "dispose_engines",
    "driver",
    "error_summary",
    "make_engine",
    "make_session_factory",
    "shared_engine",
    "side_session_factory",
    "unit_of_work",
]

#: What losing PostgreSQL raises, through SQLAlchemy or from psycopg directly.
DATABASE_OUTAGES: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)

#: SQLSTATEs of a transaction the server rolled back to resolve a conflict with
#: another (a deadlock, a serialization failure): running it again succeeds.
TRANSACTION_CONFLICTS = frozenset({"40P01", "40001"})

#: Seconds :func:`database_answers` waits for the server.
PROBE_TIMEOUT = 2

#: Checkout timeout of the side pool: a side task gives up rather than wait.
SIDE_POOL_TIMEOUT = 1.0


def make_engine(settings: Settings | None = None, *, url: str | None = None) -> Engine:
    """An engine for ``url`` (default: the settings' database) with a sized pool."""
    settings = settings or get_settings()
    make_psycopg_cooperative()
    return create_engine(
        url or settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        # No pre-ping: it costs a round trip per checkout on the hot path; a
        # dead connection fails its statement, is dropped from the pool, and
        # the runner handles the message again (DatabaseUnavailable).
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


_ENGINES: dict[str, Engine] = {}
_SIDE_FACTORIES: dict[str, sessionmaker[Session]] = {}


def shared_engine(url: str) -> Engine:
    """The process's engine for ``url``, shared by all its services."""
    if url not in _ENGINES:
        _ENGINES[url] = make_engine(url=url)
    return _ENGINES[url]


def dispose_engines() -> None:
    """Close every pooled connection of :func:`shared_engine` and the side pools."""
    for engine in _ENGINES.values():
        engine.dispose()
    for factory in _SIDE_FACTORIES.values():
        factory.kw["bind"].dispose()


def side_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions from a small pool of their own, beside ``engine``'s.

    For short side tasks that a step waits for while it holds a connection
    of the main pool (the runner's running mark): drawing from the main pool,
    a full pool would leave every step waiting for a side task that waits for
    a connection. A side pool cannot wait on the steps, and its checkout
    gives up after :data:`SIDE_POOL_TIMEOUT`.
    """
    key = engine.url.render_as_string(hide_password=False)
    if key not in _SIDE_FACTORIES:
        side = create_engine(
            engine.url, pool_size=2, max_overflow=8, pool_timeout=SIDE_POOL_TIMEOUT
        )
        _SIDE_FACTORIES[key] = make_session_factory(side)
    return _SIDE_FACTORIES[key]


def driver(session: Session) -> psycopg.Connection[Any]:
    """The psycopg connection under ``session``, in its transaction.

    For the statements of the hot paths, prepared on the server and run
    without SQLAlchemy in between.
    """
    connection = session.connection().connection.driver_connection
    assert isinstance(connection, psycopg.Connection)
    return connection


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


@contextmanager
def database_outages() -> Iterator[None]:
    """Translate the database's errors inside into autostep's.

    A deadlock or serialization failure (:data:`TRANSACTION_CONFLICTS`)
    raises :class:`TransactionConflict`; any other of
    :data:`DATABASE_OUTAGES` raises :class:`DatabaseUnavailable`. Both carry
    the server's message on one line.
    """
    try:
        yield
    except DATABASE_OUTAGES as exc:
        sqlstate = _sqlstate(exc)
        if sqlstate in TRANSACTION_CONFLICTS:
            raise TransactionConflict(
                f"{type(_driver_error(exc)).__name__}: {error_summary(exc)}", sqlstate=sqlstate
            ) from exc
        raise DatabaseUnavailable(f"database unavailable: {error_summary(exc)}") from exc


def database_answers(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the database at ``url`` accepts a new connection and answers a query.

    On a connection of its own, not from a pool (whose connections may be
    dead after an outage), giving up after ``timeout`` seconds.
    """
    try:
        with psycopg.connect(
            libpq_dsn(url), autocommit=True, connect_timeout=max(1, round(timeout))
        ) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def discard_connection(session: Session) -> None:
    """Cancel what ``session``'s connection is running, and drop it from its pool.

    For a connection whose statement was cut short on the client side (a
    timeout): psycopg is mid-command on it, and the server would otherwise
    go on running the statement, holding its locks, until it ends.
    """
    connection = session.connection()
    driver_connection = connection.connection.dbapi_connection
    if isinstance(driver_connection, psycopg.Connection):
        # dropping it is what matters; without the cancel the server ends it when it notices
        with suppress(psycopg.Error):
            driver_connection.cancel_safe(timeout=PROBE_TIMEOUT)
    connection.invalidate()


def _driver_error(exc: BaseException) -> BaseException:
    """psycopg's own error behind a SQLAlchemy one."""
    return getattr(exc, "orig", None) or exc


def _sqlstate(exc: BaseException) -> str | None:
    sqlstate: Any = getattr(_driver_error(exc), "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) else None


def error_summary(exc: BaseException) -> str:
    """The first line of the driver's message: no SQL, no parameters, no traceback."""
    text = str(_driver_error(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
