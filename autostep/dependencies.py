"""nameko dependency providers shared by every autostep service.

:class:`Database` is modelled on nameko-sqlalchemy's ``database.py``: the
engine is taken in ``setup`` (one per process and URL, shared by all the
services of a runner: :func:`autostep.db.shared_engine`); workers get a
session factory and open their own units of work
(:func:`autostep.db.unit_of_work`), so a worker's business rows and outbox
rows commit together.
"""

from __future__ import annotations

from typing import Any

from nameko import config
from nameko.extensions import DependencyProvider
from sqlalchemy.orm import Session, sessionmaker

from autostep.db import make_session_factory, shared_engine
from autostep.settings import get_settings

__all__ = ["Database"]


class Database(DependencyProvider):
    """Gives each worker the session factory of the autostep database."""

    factory: sessionmaker[Session]

    def setup(self) -> None:
        url = config.get("DATABASE_URL") or get_settings().database_url
        self.factory = make_session_factory(shared_engine(url))

    def get_dependency(self, worker_ctx: Any) -> sessionmaker[Session]:
        return self.factory
