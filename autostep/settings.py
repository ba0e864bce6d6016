"""Runtime settings for every autostep process, read from the environment.

Every process (function runners, relay, gateway, scheduler, CLI) reads the same
``AUTOSTEP_*`` variables, so one ConfigMap in the chart configures them all.
``DATABASE_URL`` and ``AMQP_URI`` are also accepted unprefixed, as most
platforms inject them that way. :func:`libpq_dsn` and :func:`amqp_params`
turn those URLs into what psycopg and py-amqp take, for every process that
connects without SQLAlchemy or kombu (the relay, benchmarks, tests).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "amqp_params", "get_settings", "libpq_dsn"]


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
    #: Relay: seconds between two looks for due rows while rows keep coming. Events
    #: notify no one (only due step messages do), so this is how late an event
    #: may reach the live grid.
    relay_poll_seconds: float = 0.05
    #: Relay: seconds without rows after which it is idle, and its look for due rows
    #: when idle.
    relay_idle_after_seconds: float = 5.0
    relay_idle_poll_seconds: float = 1.0
    #: Runner: seconds after its commit at which a step message the runner
    #: publishes itself becomes the relay's to publish, if it is still in the
    #: outbox (the runner crashed, or could not reach the broker, before it).
    dispatch_grace_seconds: float = 10.0
    #: Runner: publish the step messages of its own commits itself (True), or
    #: leave them all to the relay (False).
    direct_dispatch: bool = True
    #: Runner: most step messages of one function run in one transaction
    #: (group commit; 1 turns it off).
    group_commit_size: int = 20
    #: Runner: a group takes no more messages once it has run this long.
    group_commit_seconds: float = 0.005
    #: Runner: a function's steps are grouped only while they take less than
    #: this on average (a slow step would hold back its group's commit).
    group_commit_fast_seconds: float = 0.002
    #: Runner: groups of one function running at once (fewer: larger groups).
    group_commit_workers: int = 2
    #: Runner: the lone next step of a transaction, for a function this runner
    #: serves and has no message waiting for, runs here at once instead of
    #: through the broker; at most this many at a time per function (0: never).
    eager_steps: int = 4
    #: Relay: seconds between rebalances of the outbox shards among relays.
    relay_rebalance_seconds: float = 5.0
    #: Relay: AMQP heartbeat interval; a broker silent for two of them is taken for dead.
    relay_heartbeat_seconds: int = 2
    #: Inbox rows (seen message ids) are kept this long, then pruned by a relay.
    inbox_retention_days: int = 7
    #: Runner: a step still running after this many seconds is shown as running.
    running_mark_seconds: float = 0.5
    #: Runner: deliveries of one message before RabbitMQ dead-letters it.
    delivery_limit: int = 10
    #: Largest job input or step output, in bytes of compact JSON.
    max_payload_bytes: int = 1048576
    #: Runner: seconds between two refreshes of its rows in the function registry.
    registry_heartbeat_seconds: float = 10.0
    #: A runner is live while its last heartbeat is at most this old (default: 3 heartbeats).
    registry_grace_seconds: float = Field(
        default_factory=lambda data: 3 * data["registry_heartbeat_seconds"]
    )
    #: Runner: seconds a SIGTERM waits for running steps before abandoning them
    #: (their messages, never acknowledged, are delivered again).
    stop_timeout_seconds: float = 8.0
    #: HTTP gateway: the address ``autostep gateway run`` listens on.
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: Gateway: log one line per HTTP request (uvicorn's access log). Off by default: it
    #: costs about a fifth of a small request, and ``/metrics`` counts requests by route
    #: and status; refused requests log their own line either way.
    http_access_log: bool = False
    #: The gateway's URL as callers reach it: webhook examples show it.
    gateway_url: str = Field(
        default_factory=lambda data: f"http://{data['http_host']}:{data['http_port']}"
    )
    #: Gateway websocket: frames a connection may have waiting to be sent; one more closes it.
    live_send_buffer: int = 1000
    #: Gateway websocket: seconds one frame may take to be handed to the client's socket;
    #: longer (the client stopped reading and the socket buffers are full) closes it.
    live_send_timeout: float = 10.0
    #: Gateway websocket: a connection sent nothing for this many seconds gets a ping frame.
    live_ping_seconds: float = 20.0
    #: Where long-running processes touch their heartbeat files (``autostep health`` reads them).
    health_dir: str = "/tmp/autostep-health"
    #: Seconds between two heartbeats of a nameko process (runners, gateway RPC, scheduler).
    health_beat_seconds: float = 5.0
    #: The platform's container image; the scheduler's CronJobs run it (``AUTOSTEP_IMAGE``).
    image: str = "autostep:latest"
    #: Scheduler: ``local`` (fires cron triggers in its own process) or ``kubernetes``
    #: (keeps a CronJob per cron trigger; the Helm chart sets it).
    scheduler_backend: str = "local"
    #: Scheduler: seconds between two full resyncs of the cron triggers.
    scheduler_resync_seconds: float = 60.0
    #: Scheduler: the Kubernetes API's URL; empty: in-cluster, else ``KUBECONFIG``.
    scheduler_kube_host: str = ""
    #: Scheduler: the namespace its CronJobs live in.
    scheduler_namespace: str = "default"
    #: Scheduler: the image pull policy of its CronJobs' pods.
    scheduler_image_pull_policy: str = "IfNotPresent"
    #: Scheduler: Secrets its CronJobs' pods pull the image with, comma-separated ("" = none).
    scheduler_image_pull_secrets: str = ""
    #: Scheduler: the service account its CronJobs' pods run as ("" = the namespace's default).
    scheduler_service_account: str = ""
    #: Scheduler: the Secret, and its key, that hold the database URL for ``autostep fire``.
    scheduler_database_secret: str = "autostep-database"
    scheduler_database_secret_key: str = "DATABASE_URL"
    #: Scheduler: finished Jobs each CronJob keeps (successful, failed).
    scheduler_successful_jobs_history: int = 3
    scheduler_failed_jobs_history: int = 3
    #: Scheduler: pods a Job may start before it counts as failed, minus one.
    scheduler_backoff_limit: int = 2
    #: Scheduler: seconds a finished Job (and its pods' logs) stays before Kubernetes removes it.
    scheduler_ttl_seconds_after_finished: int = 86400
    #: Local scheduler: seconds between checks for changed triggers and for leadership.
    scheduler_poll_seconds: float = 1.0
    #: Local scheduler: seconds a replica that does not lead waits before trying again.
    scheduler_retry_seconds: float = 3.0
    #: Local scheduler: triggers fired at once (each tick in its own transaction).
    scheduler_workers: int = 4
    #: Local scheduler, tests and demos only: a simulated timeline,
    #: ``<simulated RFC 3339 time>@<Unix time>x<speed>`` (see autostep.scheduler.clock).
    scheduler_clock: str | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()


def libpq_dsn(url: str) -> str:
    """A libpq connection string (for psycopg) from a SQLAlchemy URL."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def amqp_params(uri: str, *, heartbeat: int = 0, timeout: float | None = None) -> dict[str, Any]:
    """py-amqp ``Connection`` arguments from an ``amqp://user:pass@host:port/vhost`` URI.

    ``heartbeat`` (seconds; 0 turns heartbeats off) is what the client
    proposes; py-amqp sends and checks heartbeats only when the caller drives
    them with ``Connection.heartbeat_tick()``, so a caller that cannot do so
    leaves them off and checks the connection before it uses it.
    ``timeout`` bounds connecting (TCP and the AMQP handshake) and each
    socket read or write without a timeout of its own (closing included);
    ``None`` waits as long as the operating system does.
    """
    parts = urlparse(uri)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    params: dict[str, Any] = {
        "host": f"{parts.hostname or 'localhost'}:{parts.port or 5672}",
        "userid": unquote(parts.username or "guest"),
        "password": unquote(parts.password or "guest"),
        "virtual_host": vhost,
        "heartbeat": heartbeat,
    }
    if timeout is not None:
        params.update(connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)
    return params
