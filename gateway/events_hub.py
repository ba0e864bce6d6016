"""The gateway's events hub: ``job.updated`` and ``process.updated`` from RabbitMQ to subscribers.

The relay publishes the events of every committed change of a job or a
process to the ``autostep.events`` topic exchange (:mod:`autostep.topology`),
one message per transaction (routing key ``job.events``, a list of events).
Each gateway process binds a queue of its own (exclusive, deleted with its
connection), so every replica sees every event, and routes each event to the
subscriptions of the websocket ``/ws`` (:mod:`autostep.gateway.live`) on
its topics: ``job:<job id>``, ``workflow:<workflow id>`` and
``project:<project id>``. A process event names only its job: the hub
keeps a bounded cache of job → workflow → project, read from the database
on a miss (only while someone follows a workflow or a project).

No gap, no step back: a :class:`Subscription` exists on the hub before its
snapshot is read, buffers what arrives meanwhile, and drops every event
whose ``version`` is not newer than the snapshot's for that job or
process. Events arrive in commit order per job; one that arrives again
(a relay that crashed republishes) is dropped here, by its version.

The hub never waits for a subscriber: :meth:`Subscriber.offer` only
queues a frame, and a subscriber whose queue is full is closed by its
connection. Runs on asyncio (aio-pika); never under eventlet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from prometheus_client import Counter, Gauge
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from autostep import queries
from autostep.db import make_engine, make_session_factory, unit_of_work
from autostep.gateway.snapshots import SnapshotReader
from autostep.settings import get_settings
from autostep.topology import EVENTS_EXCHANGE, JOB_EVENTS

__all__ = ["EVENT_TYPES", "EventsHub", "Subscriber", "Subscription", "Topic"]

#: The events the hub routes, and what each is about.
EVENT_TYPES = {"job.updated": "job", "process.updated": "process"}
#: Jobs and workflows whose owners the hub remembers.
OWNER_CACHE_SIZE = 100_000
#: Jobs and processes whose newest version the hub remembers, to drop republished events.
VERSION_CACHE_SIZE = 200_000
#: Seconds between two attempts to connect to the broker again after losing it.
RECONNECT_SECONDS = 1.0

#: Served at the gateway's ``/metrics`` (the process's default registry).
EVENTS_RECEIVED = Counter(
    "autostep_ws_events_received", "Events the gateway took from the autostep.events exchange."
)
EVENTS_FORWARDED = Counter(
    "autostep_ws_events_forwarded", "Event frames the gateway queued for websocket clients."
)
CONNECTIONS = Gauge("autostep_ws_connections", "Websocket connections the gateway serves now.")
#: Seconds a database connection may take: an owner look-up holds up routing.
DATABASE_CONNECT_TIMEOUT = 3

log = logging.getLogger(__name__)


class Topic:
    """``job:<id>``, ``workflow:<id>`` or ``project:<id>``, with the id in canonical form."""

    KINDS = ("job", "workflow", "project")

    def __init__(self, kind: str, ident: uuid.UUID) -> None:
        self.kind = kind
        self.ident = ident
        self.name = f"{kind}:{ident}"

    @classmethod
    def parse(cls, text: str) -> Topic:
        """The topic ``text`` names; ValueError saying what is wrong."""
        kind, _, ident = text.partition(":")
        if kind not in cls.KINDS:
            raise ValueError("must be job:<id>, workflow:<id> or project:<id>")
        try:
            return cls(kind, uuid.UUID(ident))
        except ValueError:
            raise ValueError(f"{ident!r} is not an id (a UUID)") from None


class Subscriber(Protocol):
    """What receives a subscription's frames: a websocket connection."""

    def offer(self, text: str, *, beyond_limit: bool = False) -> None:
        """Queue ``text`` to be sent, without waiting (past a full queue if ``beyond_limit``)."""

    def overflow(self) -> None:
        """Too much is waiting for this subscriber: it is to be closed."""


class Subscription:
    """One topic of one subscriber: buffers events until its snapshot is sent, then filters.

    Versions are kept for the jobs and processes in the snapshot only, so a
    subscription's memory is bounded by its snapshot.
    """

    def __init__(
        self, topic: Topic, subscriber: Subscriber, buffer_limit: int, limit: int = 50
    ) -> None:
        self.topic = topic
        self.subscriber = subscriber
        #: Events that may wait for the snapshot; one more overflows the subscriber.
        self.buffer_limit = buffer_limit
        #: ``workflow:`` and ``project:``: how many of the newest jobs a snapshot holds.
        self.limit = limit
        self._buffered: list[tuple[str, int, str]] | None = []
        self._versions: dict[str, int] = {}

    def deliver(self, entity: str, version: int, text: str) -> None:
        """An event frame about ``entity`` (``job:<id>``, ``process:<id>``) at ``version``."""
        if self._buffered is None:
            self._forward(entity, version, text)
            return
        self._buffered.append((entity, version, text))
        if len(self._buffered) > self.buffer_limit:
            self.subscriber.overflow()

    def snapshot_taken(self, text: str, versions: dict[str, int]) -> None:
        """Send the snapshot ``text``, then the buffered events newer than ``versions``.

        These are queued beyond the subscriber's limit: they were bounded
        while buffered, and the client has not had a chance to read them.
        """
        self._versions = versions
        buffered, self._buffered = self._buffered or [], None
        self.subscriber.offer(text, beyond_limit=True)
        for entity, version, frame in buffered:
            self._forward(entity, version, frame, beyond_limit=True)

    def buffer_again(self) -> None:
        """Buffer events again until the next snapshot (events may have been missed)."""
        if self._buffered is None:
            self._buffered = []

    def _forward(self, entity: str, version: int, text: str, *, beyond_limit: bool = False) -> None:
        seen = self._versions.get(entity)
        if seen is not None:
            if version <= seen:
                return
            self._versions[entity] = version
        self.subscriber.offer(text, beyond_limit=beyond_limit)


class _Lru(OrderedDict[str, Any]):
    """A dict that forgets its least recently set entries beyond ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


class EventsHub:
    """Consumes ``autostep.events`` with a queue of this process's own and routes to topics.

    Call :meth:`start` and :meth:`stop` from the app's lifespan. When the
    broker connection comes back after a loss, events may have been missed:
    every subscription buffers again and ``reconnect_listeners`` (the
    connections) take a fresh snapshot of each.
    """

    def __init__(
        self,
        amqp_uri: str | None = None,
        session_factory: sessionmaker[Session] | None = None,
    ) -> None:
        self.amqp_uri = amqp_uri or get_settings().amqp_uri
        self._factory = session_factory
        self._topics: dict[str, set[Subscription]] = {}
        self._owned_topics = 0
        self._job_owners = _Lru(OWNER_CACHE_SIZE)
        self._workflow_projects = _Lru(OWNER_CACHE_SIZE)
        self._versions = _Lru(VERSION_CACHE_SIZE)
        # owner look-ups hold up routing: a thread of their own, never behind snapshots
        self._lookups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events-hub")
        self._connection: AbstractRobustConnection | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._snapshots: SnapshotReader | None = None
        self.queue_name = (
            f"autostep.gateway.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        )
        #: Called after the broker connection came back (the connections re-snapshot).
        self.reconnect_listeners: set[Callable[[], None]] = set()
        #: Events received from the broker, and event frames handed to subscribers.
        self.events_received = 0
        self.events_forwarded = 0

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Start routing in the background: connect, bind this process's queue, consume.

        A broker that cannot be reached yet is tried again every
        :data:`RECONNECT_SECONDS`, with one log line, while the gateway
        serves (``/readyz`` says the broker is missing); once it answers,
        every subscription made meanwhile takes a new snapshot.
        """
        if self._factory is None:
            url = make_url(get_settings().database_url)
            if "connect_timeout" not in url.query:
                url = url.update_query_dict({"connect_timeout": str(DATABASE_CONNECT_TIMEOUT)})
            engine = make_engine(url=url.render_as_string(hide_password=False))
            self._factory = make_session_factory(engine)
        self._snapshots = SnapshotReader(self._factory)
        CONNECTIONS.set_function(lambda: self.connections)
        self._consumer = asyncio.create_task(self._run(), name="events-hub")

    async def _run(self) -> None:
        waited = False
        while self._connection is None:
            try:
                self._connection = await aio_pika.connect_robust(
                    self.amqp_uri, timeout=10, reconnect_interval=RECONNECT_SECONDS
                )
            except (aio_pika.exceptions.AMQPConnectionError, OSError) as exc:
                if not waited:
                    log.warning(
                        "events hub: broker not reachable (%s); trying again every %.0f s",
                        exc,
                        RECONNECT_SECONDS,
                    )
                    waited = True
                await asyncio.sleep(RECONNECT_SECONDS)
        self._connection.reconnect_callbacks.add(self._reconnected)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(self.queue_name, exclusive=True, auto_delete=True)
        await queue.bind(exchange, JOB_EVENTS)
        log.info("events hub: consuming %s on queue %s", EVENTS_EXCHANGE, self.queue_name)
        if waited:
            self._reconnected()
        await self._consume(queue)

    async def stop(self) -> None:
        """Stop routing and close the broker connection."""
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
            self._consumer = None
        if self._snapshots is not None:
            await self._snapshots.close()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        self._lookups.shutdown(wait=False)

    # -- subscriptions ----------------------------------------------------------

    @property
    def connections(self) -> int:
        """Websocket connections this hub serves now."""
        return len(self.reconnect_listeners)

    def subscribe(self, subscription: Subscription) -> None:
        """Route events of ``subscription.topic`` to it from now on (buffered till its snapshot)."""
        self._topics.setdefault(subscription.topic.name, set()).add(subscription)
        if subscription.topic.kind != "job":
            self._owned_topics += 1

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._topics.get(subscription.topic.name)
        if subscribers is None or subscription not in subscribers:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._topics[subscription.topic.name]
        if subscription.topic.kind != "job":
            self._owned_topics -= 1

    async def snapshot(self, topic: Topic, limit: int) -> tuple[str, dict[str, int]]:
        """The snapshot frame of ``topic`` and the versions it holds (a copy of the caller's own).

        ``job:``: the job's view with its processes; ``workflow:`` and
        ``project:``: the newest ``limit`` jobs. Read by
        :class:`~autostep.gateway.snapshots.SnapshotReader`: bounded, and
        shared by the subscriptions to the same topic waiting for it. Raises
        :class:`~autostep.exceptions.NotFoundError` for an unknown id.
        """
        assert self._snapshots is not None, "the hub is not started"
        found = await self._snapshots.read(topic, limit)
        for job_id, (workflow_id, project_id) in found.owners.items():
            self._remember_owners(job_id, workflow_id, project_id)
        return found.text, dict(found.versions)

    # -- routing ----------------------------------------------------------------

    async def _consume(self, queue: AbstractQueue) -> None:
        # One task, one message at a time: events keep their per-job order.
        async with queue.iterator(no_ack=True) as messages:
            async for message in messages:
                try:
                    await self.route_message(message.body)
                except Exception:
                    log.exception("events hub: events %s not routed", _message_id(message))
                # let the connections send before the next event: a burst of events
                # must not fill the queues of clients that read as fast as they can
                await asyncio.sleep(0)

    async def route_message(self, body: bytes) -> None:
        """Route each event of one message (a JSON list of ``{"type", "id", "payload"}``)."""
        try:
            events = json.loads(body)
            typed = [(event["type"], event["payload"]) for event in events]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("events hub: dropped a message that is not a list of events: %r", exc)
            return
        for event_type, payload in typed:
            if event_type in EVENT_TYPES:
                await self.route(event_type, payload)

    async def route(self, event_type: str, payload: Any) -> None:
        """Hand the event ``payload`` (a ``*.updated`` one) to the subscriptions of its topics."""
        self.events_received += 1
        EVENTS_RECEIVED.inc()
        try:
            kind = EVENT_TYPES[event_type]
            entity = f"{kind}:{payload['id']}"
            version = int(payload["version"])
            job_id = str(payload["id"] if kind == "job" else payload["job_id"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("events hub: dropped a %r event without its fields: %r", event_type, exc)
            return
        newest = self._versions.get(entity)
        if newest is not None and version <= newest:
            return  # published again after a relay crash, or older than what we sent
        self._versions.put(entity, version)
        if kind == "job":
            self._job_owners.put(job_id, (str(payload["workflow_id"]), None))
        topics = [f"job:{job_id}"]
        if self._owned_topics:
            owners = await self._owners(job_id)
            if owners is not None:
                topics += [f"workflow:{owners[0]}", f"project:{owners[1]}"]
        data: str | None = None  # the payload's JSON, made for the first subscription
        for topic in topics:
            subscriptions = self._topics.get(topic)
            if not subscriptions:
                continue
            if data is None:
                data = json.dumps(payload, separators=(",", ":"))
            text = f'{{"type":"event","topic":"{topic}","event":"{event_type}","data":{data}}}'
            for subscription in tuple(subscriptions):
                subscription.deliver(entity, version, text)
                self.events_forwarded += 1
                EVENTS_FORWARDED.inc()

    async def _owners(self, job_id: str) -> tuple[str, str] | None:
        """The workflow and project of ``job_id``, from the caches or else the database."""
        workflow_id, project_id = self._job_owners.get(job_id) or (None, None)
        if project_id is None and workflow_id is not None:
            project_id = self._workflow_projects.get(workflow_id)
        if workflow_id is not None and project_id is not None:
            return workflow_id, project_id
        try:
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._lookups, self._read_owners, job_id)
        except Exception as exc:
            log.warning(
                "events hub: owners of job %s not read (%s); sent to job:%s only",
                job_id,
                exc,
                job_id,
            )
            return None
        if found is None:
            return None
        self._remember_owners(job_id, *found)
        return found

    def _read_owners(self, job_id: str) -> tuple[str, str] | None:
        assert self._factory is not None, "the hub is not started"
        with unit_of_work(self._factory) as session:
            owners = queries.job_owners(session, uuid.UUID(job_id))
        return (str(owners[0]), str(owners[1])) if owners is not None else None

    def _remember_owners(self, job_id: str, workflow_id: str, project_id: str) -> None:
        self._job_owners.put(job_id, (workflow_id, project_id))
        self._workflow_projects.put(workflow_id, project_id)

    def _reconnected(self, *_: Any) -> None:
        log.warning("events hub: broker connection back; every subscription takes a new snapshot")
        for subscriptions in self._topics.values():
            for subscription in subscriptions:
                subscription.buffer_again()
        for listener in tuple(self.reconnect_listeners):
            listener()


def _message_id(message: AbstractIncomingMessage) -> str:
    return message.message_id or "(no message id)"
