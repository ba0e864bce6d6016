"""Snapshots of the websocket's topics, read for the events hub: shared, bounded, one statement.

When a thousand clients subscribe at once (a grid opened by a whole team, a
gateway that starts while clients reconnect), their snapshots would each
take a worker thread and a database connection. :class:`SnapshotReader`
reads at most ``concurrency`` at a time and lets subscriptions to the same
topic (and the same ``limit``) that wait for their read share it: ten
clients on one job cost one read. A read is shared only by subscriptions
made before it starts, so each of them gets a snapshot taken after it
subscribed, as :mod:`autostep.gateway.events_hub` requires (no gap between
a snapshot and the events that follow it).

A job's snapshot is one statement on an autocommit connection
(:func:`autostep.queries.job_view`); a workflow's or a project's lists its
newest jobs in a transaction.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from autostep import catalog, queries
from autostep.db import unit_of_work

if TYPE_CHECKING:
    from autostep.gateway.events_hub import Topic

__all__ = ["SNAPSHOT_CONCURRENCY", "Snapshot", "SnapshotReader"]

#: Snapshots read at the same time, each in a worker thread with a connection of its own.
SNAPSHOT_CONCURRENCY = 4


@dataclass(frozen=True)
class Snapshot:
    """A topic's snapshot frame, the versions it holds, and the owners of the jobs it lists."""

    #: The ``snapshot`` frame, as sent.
    text: str
    #: ``job:<id>`` and ``process:<id>`` → version, for dropping older events.
    versions: dict[str, int]
    #: Job id → (workflow id, project id), for routing the jobs' events to their owners.
    owners: dict[str, tuple[str, str]]


class SnapshotReader:
    """Reads snapshots in worker threads, ``concurrency`` at a time, shared by waiting readers."""

    def __init__(self, factory: sessionmaker[Session], concurrency: int = SNAPSHOT_CONCURRENCY):
        self._factory = factory
        engine: Engine = factory.kw["bind"]
        self._reads = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._slots = asyncio.Semaphore(concurrency)
        #: Reads asked for and not started yet, by (topic, limit): later askers join them.
        self._waiting: dict[tuple[str, int], asyncio.Future[Snapshot]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Reads done, and the snapshots they answered (more when shared).
        self.reads = 0
        self.answered = 0

    async def read(self, topic: Topic, limit: int) -> Snapshot:
        """The snapshot of ``topic`` (newest ``limit`` jobs for a workflow or project).

        Taken after this call began. Raises what the read raises
        (:class:`~autostep.exceptions.NotFoundError` for an unknown id).
        """
        key = (topic.name, limit)
        shared = self._waiting.get(key)
        if shared is None:
            shared = asyncio.get_running_loop().create_future()
            self._waiting[key] = shared
            task = asyncio.create_task(self._read_when_free(key, topic, limit, shared))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.answered += 1
        # shielded: one reader that goes away does not cancel the read of the others
        return await asyncio.shield(shared)

    async def close(self) -> None:
        """Cancel the reads not finished."""
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read_when_free(
        self, key: tuple[str, int], topic: Topic, limit: int, shared: asyncio.Future[Snapshot]
    ) -> None:
        try:
            async with self._slots:
                # from here on nobody joins: a later subscription needs a later read
                del self._waiting[key]
                self.reads += 1
                snapshot = await asyncio.to_thread(self._read, topic, limit)
        except asyncio.CancelledError:
            self._forget(key, shared)
            shared.cancel()
            raise
        except Exception as exc:
            self._forget(key, shared)
            shared.set_exception(exc)
            shared.exception()  # marked as seen: every reader may have gone away
            return
        shared.set_result(snapshot)

    def _forget(self, key: tuple[str, int], shared: asyncio.Future[Snapshot]) -> None:
        if self._waiting.get(key) is shared:
            del self._waiting[key]

    def _read(self, topic: Topic, limit: int) -> Snapshot:
        owners: dict[str, tuple[str, str]] = {}
        if topic.kind == "job":
            with self._reads.connect() as connection:
                view = queries.job_view(connection, topic.ident)
            body: dict[str, Any] = {"job": view}
            versions = {f"job:{view['id']}": view["version"]}
            versions.update({f"process:{p['id']}": p["version"] for p in view["processes"]})
        else:
            with unit_of_work(self._factory) as session:
                if topic.kind == "workflow":
                    project_id = queries.workflow_project(session, topic.ident)
                    jobs = queries.list_jobs(session, workflow_id=topic.ident, limit=limit)
                else:
                    project_id = catalog.get_project(session, topic.ident).id
                    jobs = queries.list_jobs(session, project_id=topic.ident, limit=limit)
            body = {"jobs": jobs}
            versions = {f"job:{job['id']}": job["version"] for job in jobs}
            owners = {job["id"]: (job["workflow_id"], str(project_id)) for job in jobs}
        text = json.dumps({"type": "snapshot", "topic": topic.name, **body})
        return Snapshot(text, versions, owners)
