"""Engine and unit of work over SQLAlchemy 2 and psycopg 3.

Every write autostep makes goes through :func:`unit_of_work`: business rows and
the outbox rows announcing them commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from autostep.cooperative import make_psycopg_cooperative
from autostep.settings import Settings, get_settings

__all__ = ["make_engine", "make_session_factory", "unit_of_work"]


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


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session
