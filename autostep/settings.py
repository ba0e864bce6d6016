"""Runtime settings for every autostep process, read from the environment.

Every process (function runners, relay, gateway, scheduler, CLI) reads the same
``AUTOSTEP_*`` variables, so one ConfigMap in the chart configures them all.
``DATABASE_URL`` and ``AMQP_URI`` are also accepted unprefixed, as most
platforms inject them that way.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """What every autostep process needs to know about its surroundings."""

    model_config = SettingsConfigDict(env_prefix="AUTOSTEP_", extra="ignore")

    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/autostep",
        validation_alias=AliasChoices("AUTOSTEP_DATABASE_URL", "DATABASE_URL"),
    )
    amqp_uri: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        validation_alias=AliasChoices("AUTOSTEP_AMQP_URI", "AMQP_URI"),
    )
    #: Database connections per process (SQLAlchemy pool size).
    db_pool_size: int = 10
    #: Messages a function runner holds unacknowledged (AMQP prefetch).
    prefetch_count: int = 50
    #: Greenlets a function runner runs steps in at once.
    max_workers: int = 50
    #: Relay: outbox rows claimed per round trip.
    relay_batch_size: int = 500
    #: Relay: seconds a claim is leased before another relay may take the rows.
    relay_lease_seconds: float = 30.0
    #: Relay: polling fallback when no NOTIFY arrives.
    relay_poll_seconds: float = 1.0
    #: Relay: seconds between rebalances of the outbox shards among relays.
    relay_rebalance_seconds: float = 5.0
    #: Inbox rows (seen message ids) are kept this long, then pruned by a relay.
    inbox_retention_days: int = 7
    #: Runner: a step still running after this many seconds is shown as running.
    running_mark_seconds: float = 0.5
    #: Runner: deliveries of one message before RabbitMQ dead-letters it.
    delivery_limit: int = 10


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
