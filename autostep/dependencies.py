"""nameko dependency providers shared by every autostep service.

:class:`Database` is modelled on nameko-sqlalchemy's ``database.py``: the
engine is taken in ``setup`` (one per process and URL, shared by all the
services of a runner: :func:`autostep.db.shared_engine`); workers get a
session factory and open their own units of work
(:func:`autostep.db.unit_of_work`), so a worker's business rows and outbox
rows commit together.

:class:`FunctionRegistration` puts a function service in the function
registry (:mod:`autostep.registry`) while its container runs. Every function
service of a process shares one :class:`RunnerPresence`: one runner id, one
heartbeat greenlet refreshing all its rows every
``registry_heartbeat_seconds`` and touching the ``functions`` heartbeat file
that ``autostep health`` checks (:mod:`autostep.health`).

:class:`StepDispatch` gives a function service's workers the process's
:class:`~autostep.dispatch.StepDispatcher`, which publishes the step
messages of their commits; it runs while any function service does.
"""

from __future__ import annotations

import logging
from typing import Any

import eventlet
from eventlet.event import Event
from eventlet.semaphore import Semaphore
from nameko import config
from nameko.extensions import DependencyProvider
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from autostep import health, registry
from autostep.db import (
    DATABASE_OUTAGES,
    make_session_factory,
    shared_engine,
    side_session_factory,
    unit_of_work,
)
from autostep.dispatch import StepDispatcher, step_dispatcher
from autostep.sdk import FunctionSpec
from autostep.settings import get_settings

__all__ = [
    "Database",
    "FunctionRegistration",
    "RunnerPresence",
    "StepDispatch",
    "runner_presence",
]

log = logging.getLogger(__name__)

#: What a registry write may hit that is not a bug: the database is away,
#: or the side pool had no connection free within its timeout.
REGISTRY_OUTAGES: tuple[type[Exception], ...] = (*DATABASE_OUTAGES, sa_exc.TimeoutError)


class Database(DependencyProvider):
    """Gives each worker the session factory of the autostep database."""

    factory: sessionmaker[Session]

    def setup(self) -> None:
        url = config.get("DATABASE_URL") or get_settings().database_url
        self.factory = make_session_factory(shared_engine(url))

    def get_dependency(self, worker_ctx: Any) -> sessionmaker[Session]:
        return self.factory


class RunnerPresence:
    """This process as a runner in the function registry.

    Functions join when their service starts (:meth:`add`: registered at
    once) and leave when it stops (:meth:`remove`: their rows are deleted).
    While any function is served, a greenlet calls :meth:`beat` every
    ``registry_heartbeat_seconds``. A registry write that fails logs one line
    and is tried again at the next beat; it never stops the runner.
    """

    def __init__(self, factory: sessionmaker[Session] | None = None) -> None:
        self.runner = registry.new_runner_id()
        self.factory = factory
        self.specs: dict[str, FunctionSpec] = {}
        self._writing = Semaphore()
        self._stopping: Event | None = None
        self._beating: Any = None

    def add(self, spec: FunctionSpec, factory: sessionmaker[Session]) -> None:
        """Serve ``spec`` from now on: register it, and start beating if not yet."""
        self.factory = self.factory or factory
        self.specs[spec.name] = spec
        self._write("register", lambda session: registry.register(session, self.runner, [spec]))
        if self._beating is None:
            self._stopping = Event()
            self._beating = eventlet.spawn(self._beat_until_stopped, self._stopping)

    def remove(self, spec: FunctionSpec) -> None:
        """Stop serving ``spec``: no more heartbeats for it, and its row is deleted."""
        self.specs.pop(spec.name, None)
        if not self.specs and self._beating is not None:
            assert self._stopping is not None
            self._stopping.send(True)
            self._beating.wait()
            self._beating = self._stopping = None
        self._write(
            "unregister", lambda session: registry.unregister(session, self.runner, [spec.name])
        )

    def beat(self) -> bool:
        """Refresh this runner's rows, registering again those that went missing.

        Returns whether it worked; a failure is logged in one line.
        """

        def refresh(session: Session) -> None:
            specs = list(self.specs.values())
            found = registry.heartbeat(session, self.runner, [spec.name for spec in specs])
            if found < len(specs):
                registry.register(session, self.runner, specs)

        return self._write("heartbeat", refresh)

    def _beat_until_stopped(self, stopping: Event) -> None:
        interval = get_settings().registry_heartbeat_seconds
        while stopping.wait(timeout=interval) is None:
            self.beat()
            health.beat("functions")

    def _write(self, what: str, work: Any) -> bool:
        assert self.factory is not None
        try:
            # One write at a time: a beat that read the functions served
            # cannot register one again after its removal deleted it.
            with self._writing, unit_of_work(self.factory) as session:
                work(session)
        except REGISTRY_OUTAGES as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("function registry: %s of runner %s failed: %s", what, self.runner, reason)
            return False
        except Exception:
            log.exception("function registry: %s of runner %s failed", what, self.runner)
            return False
        return True


_PRESENCE: RunnerPresence | None = None


def runner_presence() -> RunnerPresence:
    """The :class:`RunnerPresence` of this process (created on first use)."""
    global _PRESENCE
    if _PRESENCE is None:
        _PRESENCE = RunnerPresence()
    return _PRESENCE


class FunctionRegistration(DependencyProvider):
    """Keeps ``spec`` registered as served by this process while the service runs.

    Registers on container start; unregisters when the container stops, or
    is killed (nameko kills a container on an unexpected error): it no
    longer serves the function. A process that dies without either leaves
    its rows to go stale after the grace.
    """

    def __init__(self, spec: FunctionSpec) -> None:
        self.spec = spec

    def setup(self) -> None:
        url = config.get("DATABASE_URL") or get_settings().database_url
        # The side pool: a heartbeat never waits behind steps holding the main pool.
        self.factory = side_session_factory(shared_engine(url))

    def start(self) -> None:
        runner_presence().add(self.spec, self.factory)

    def stop(self) -> None:
        runner_presence().remove(self.spec)

    def kill(self) -> None:
        runner_presence().remove(self.spec)

    def get_dependency(self, worker_ctx: Any) -> None:
        return None


class StepDispatch(DependencyProvider):
    """Gives each worker the process's :class:`StepDispatcher` for these servers.

    The dispatcher starts with the first service that uses it and stops,
    after publishing what it was handed, with the last one (nameko stops a
    service's dependencies after its workers finished).
    """

    dispatcher: StepDispatcher | None

    def setup(self) -> None:
        settings = get_settings()
        if not settings.direct_dispatch:
            self.dispatcher = None
            return
        self.dispatcher = step_dispatcher(
            config.get("AMQP_URI") or settings.amqp_uri,
            config.get("DATABASE_URL") or settings.database_url,
        )

    def start(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.users += 1
            self.dispatcher.start()

    def stop(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.users -= 1
            if self.dispatcher.users <= 0:
                self.dispatcher.stop()

    def kill(self) -> None:
        self.stop()

    def get_dependency(self, worker_ctx: Any) -> StepDispatcher | None:
        return self.dispatcher
