"""Engine and unit of work over SQLAlchemy 2 and psycopg 3.

Every write autostep makes goes through :func:`unit_of_work`: business rows and
the outbox rows announcing them commit together or not at all. Losing the
database is translated here, in one place, into
:class:`~autostep.exceptions.DatabaseUnavailable` (:func:`database_outages`),
which the function runners answer by requeueing and the relay by reconnecting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from autostep.cooperative import make_psycopg_cooperative
from autostep.exceptions import DatabaseUnavailable
from autostep.settings import Settings, get_settings

__all__ = [
    "DATABASE_OUTAGES",
    "database_outages",
    "dispose_engines",
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
        # the runner requeues the message (InfrastructureError).
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


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


@contextmanager
def database_outages() -> Iterator[None]:
    """Raise :class:`DatabaseUnavailable` for any of :data:`DATABASE_OUTAGES` inside."""
    try:
        yield
    except DATABASE_OUTAGES as exc:
        raise DatabaseUnavailable(f"database unavailable: {exc}") from exc
