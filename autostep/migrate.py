"""Database migrations: ``autostep db upgrade`` runs Alembic programmatically.

The Alembic scripts live in ``autostep/migrations`` inside the package, so the
one container image carries them and the chart's hook Job can run them.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from autostep.settings import get_settings

__all__ = ["alembic_config", "downgrade", "upgrade"]

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url or get_settings().database_url)
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
