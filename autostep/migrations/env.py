"""Alembic environment: migrates the database named by the config's URL.

Run through ``autostep db upgrade`` (see :mod:`autostep.migrate`), once per
release: in the chart as a pre-install/pre-upgrade hook Job, never by each
replica at start-up.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from autostep.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
