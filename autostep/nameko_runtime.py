"""Runs nameko service classes in this process, configured from the settings.

What ``nameko run`` does, for ``autostep functions run`` and
``autostep gateway run``: eventlet must already be monkey-patched (the CLI
does it first thing), then psycopg is made cooperative, nameko's config is
filled from :class:`Settings`, and the services run until SIGTERM or SIGINT,
touching their heartbeat file for ``autostep health`` (:mod:`autostep.health`).
:func:`log_expected_errors_in_one_line` keeps nameko from logging a
traceback for errors that are the caller's (a missing job, a bad name).

Stopping is bounded: the services stop gracefully (no new messages, running
workers finish) for at most ``stop_timeout_seconds``, then they are killed,
whatever the broker or the database is doing, also while they are still
starting (waiting for a broker that is down). A step killed that way never
committed, and its message, never acknowledged, is delivered again.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

import eventlet
from eventlet.queue import LightQueue
from nameko import config
from nameko.runners import ServiceRunner

from autostep import health
from autostep.cooperative import make_psycopg_cooperative
from autostep.exceptions import ConflictError, InternalError, InvalidInput, NotFoundError
from autostep.settings import get_settings

__all__ = [
    "configure_from_environment",
    "log_expected_errors_in_one_line",
    "nameko_config",
    "run_services",
    "stop_within",
]

log = logging.getLogger(__name__)

#: Errors an entrypoint raises for its caller: logged in one line, no traceback.
#: (:class:`InternalError` is logged in full where it is raised.)
ONE_LINE_ERRORS = (NotFoundError, ConflictError, InvalidInput, InternalError)


class _OneLineExpectedErrors(logging.Filter):
    """Drops the traceback from nameko's log record of an expected caller error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ONE_LINE_ERRORS):
            record.exc_info = None
            record.exc_text = None
        return True


def log_expected_errors_in_one_line() -> None:
    """Make nameko log :data:`ONE_LINE_ERRORS` of entrypoints in one line (idempotent).

    nameko logs an entrypoint's expected exception as a warning with its
    traceback (``nameko.containers``); unexpected ones keep theirs.
    """
    logger = logging.getLogger("nameko.containers")
    if not any(isinstance(found, _OneLineExpectedErrors) for found in logger.filters):
        logger.addFilter(_OneLineExpectedErrors())


def nameko_config() -> dict[str, Any]:
    """nameko's configuration for autostep services."""
    settings = get_settings()
    return {
        "AMQP_URI": settings.amqp_uri,
        "DATABASE_URL": settings.database_url,
        "max_workers": settings.max_workers,
        "PREFETCH_COUNT": settings.prefetch_count,
    }


def configure_from_environment() -> None:
    """Fill in what nameko's config lacks from the environment, for ``nameko run``.

    ``nameko run mymodule`` reads its config from ``--config config.yaml`` or
    ``--define``; whatever those leave out (``AMQP_URI``, ``DATABASE_URL``,
    ...) comes from the same variables as every autostep process
    (``AMQP_URI`` or ``AUTOSTEP_AMQP_URI``, ...). Expected errors log one line.
    """
    for key, value in nameko_config().items():
        config.setdefault(key, value)
    log_expected_errors_in_one_line()


def run_services(
    services: list[type],
    on_started: Callable[[], None] | None = None,
    *,
    component: str | None = None,
) -> None:
    """Serve ``services`` until the process is told to stop.

    With ``component``, a greenlet touches its heartbeat file
    (:func:`autostep.health.beat`) every ``health_beat_seconds`` while the
    process runs, so ``autostep health COMPONENT`` fails once its event loop
    is stuck.
    """
    make_psycopg_cooperative()
    log_expected_errors_in_one_line()
    config.update(nameko_config())
    runner = ServiceRunner()
    for service in services:
        runner.add_service(service)

    # What happens first: the services started, or a signal stopped them (a
    # service waiting for a broker that is down may never finish starting).
    progress: LightQueue[str] = LightQueue()

    def start() -> None:
        runner.start()
        progress.put("started")

    def stop() -> None:
        stop_within(runner, get_settings().stop_timeout_seconds)
        progress.put("stopped")

    stopping: list[bool] = []

    def shutdown(signum: int, frame: Any) -> None:
        if not stopping:  # a second signal changes nothing
            stopping.append(True)
            eventlet.spawn_n(stop)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    if component is not None:
        eventlet.spawn_n(_beat_forever, component, get_settings().health_beat_seconds)
    eventlet.spawn_n(start)
    if progress.get() == "stopped":
        return
    if on_started is not None:
        on_started()
    runner.wait()


def _beat_forever(component: str, interval: float) -> None:
    while True:
        health.beat(component)
        eventlet.sleep(interval)


def stop_within(runner: ServiceRunner, seconds: float) -> None:
    """Stop ``runner`` gracefully, or kill its services after ``seconds``."""
    with eventlet.Timeout(seconds, False):
        runner.stop()
        return
    log.warning("services did not stop within %s s; abandoning the running steps", seconds)
    runner.kill()
