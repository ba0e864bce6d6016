"""nameko dependency providers shared by every autostep service.

:class:`Database` is modelled on nameko-sqlalchemy's ``database.py``: the
engine is made in ``setup`` (one per process and URL, shared by all the
services of a runner), workers get a session factory and open their own
units of work (:func:`autostep.db.unit_of_work`), so a worker's business
rows and outbox rows commit together.
"""

from __future__ import annotations

from typing import Any

from nameko import config
from nameko.extensions import DependencyProvider
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from autostep.db import make_engine, make_session_factory
from autostep.settings import get_settings

__all__ = ["Database", "shared_engine"]

_ENGINES: dict[str, Engine] = {}


def shared_engine(url: str) -> Engine:
    """The process's engine for ``url``."""
    if url not in _ENGINES:
        _ENGINES[url] = make_engine(url=url)
    return _ENGINES[url]


class Database(DependencyProvider):
    """Gives each worker the session factory of the autostep database."""

    factory: sessionmaker[Session]

    def setup(self) -> None:
        url = config.get("DATABASE_URL") or get_settings().database_url
        self.factory = make_session_factory(shared_engine(url))

    def get_dependency(self, worker_ctx: Any) -> sessionmaker[Session]:
        return self.factory
