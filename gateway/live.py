"""The websocket ``/ws`` of the live grid: snapshots, then events as they commit.

A client sends JSON text frames (``op``) and receives JSON text frames
(``type``)::

    → {"op": "subscribe", "topic": "job:<id>"}          also workflow:<id>, project:<id>
    ← {"type": "snapshot", "topic": "job:<id>", "job": {...job view, "processes": [...]}}
    ← {"type": "event", "topic": "job:<id>", "event": "process.updated", "data": {...}}
    → {"op": "subscribe", "topic": "project:<id>", "limit": 20}
    ← {"type": "snapshot", "topic": "project:<id>", "jobs": [...newest 20 jobs]}
    → {"op": "unsubscribe", "topic": "job:<id>"}
    ← {"type": "unsubscribed", "topic": "job:<id>"}
    → {"op": "ping"}                                     ← {"type": "pong"}
    ← {"type": "ping"}                                   (after 20 s without a frame)
    ← {"type": "error", "field": "topic", "message": "no job 6f0c…", "topic": "job:6f0c…"}

Each subscription gets its snapshot first, then every ``job.updated`` and
``process.updated`` of its topic committed after it, in commit order per
job (:mod:`autostep.gateway.events_hub` says how no event is lost
between the two). A ``snapshot`` may come again on a subscription: after
the gateway lost the broker for a while, or when the client subscribes to
the same topic again; it replaces what the client holds.

Each connection has a bounded queue of frames to send
(``AUTOSTEP_LIVE_SEND_BUFFER``, 1,000): a client that does not read fast
enough to keep it from filling is closed with code :data:`SLOW_CLIENT`
(4008); the others never wait for it. A client that stops reading while
few events arrive never fills that queue, but its socket buffers fill
and a send waits for them: a frame that cannot be handed to the socket
within ``AUTOSTEP_LIVE_SEND_TIMEOUT`` seconds (10) closes it with 4008 too.

Mount :data:`router` in the app and enter :func:`events_hub` in its lifespan.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, WebSocket
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from autostep.exceptions import AutostepError, InvalidInput
from autostep.gateway.events_hub import EventsHub, Subscription, Topic
from autostep.settings import get_settings
from autostep.validation import invalid_input

__all__ = [
    "MAX_FRAME_CHARS",
    "MAX_SUBSCRIPTIONS",
    "SLOW_CLIENT",
    "UNAVAILABLE",
    "LiveConnection",
    "events_hub",
    "parse_frame",
    "router",
]

#: Close code for a client whose send queue filled up.
SLOW_CLIENT = 4008
#: Served at the gateway's ``/metrics``.
SLOW_CLIENTS_CLOSED = Counter(
    "autostep_ws_slow_clients_closed", "Websocket clients closed because they read too slowly."
)
#: Close code when the gateway has no events hub (it is starting or stopping).
UNAVAILABLE = 1013
#: Topics one connection may follow at once.
MAX_SUBSCRIPTIONS = 100
#: Longest text frame a client may send.
MAX_FRAME_CHARS = 65536
#: Seconds to wait for a close frame to go out to a client that is being closed.
CLOSE_TIMEOUT = 10.0
#: Events a subscription may buffer while its snapshot is read, in send buffers.
SNAPSHOT_BUFFER_FACTOR = 10

log = logging.getLogger(__name__)

router = APIRouter()


@asynccontextmanager
async def events_hub(app: FastAPI) -> AsyncIterator[EventsHub]:
    """Start an :class:`EventsHub` for ``app`` (for ``/ws``) and stop it on exit.

    Use it in the app's lifespan: ``async with events_hub(app): yield``.
    """
    hub = EventsHub()
    await hub.start()
    app.state.events_hub = hub
    try:
        yield hub
    finally:
        await hub.stop()


# -- what clients send ----------------------------------------------------------


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TopicFrame(_Frame):
    topic: Topic

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @field_validator("topic", mode="plain")
    @classmethod
    def _topic(cls, value: Any) -> Topic:
        if not isinstance(value, str):
            raise PydanticCustomError("topic", "must be a string such as job:<id>")
        try:
            return Topic.parse(value)
        except ValueError as exc:
            raise PydanticCustomError("topic", "{reason}", {"reason": str(exc)}) from None


class Subscribe(_TopicFrame):
    op: Literal["subscribe"]
    #: ``workflow:`` and ``project:``: how many of the newest jobs the snapshot holds.
    limit: Annotated[int, Field(strict=True, ge=1, le=500)] = 50


class Unsubscribe(_TopicFrame):
    op: Literal["unsubscribe"]


class Ping(_Frame):
    op: Literal["ping"]


_FRAMES: dict[str, type[_Frame]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "ping": Ping,
}


def parse_frame(text: str) -> _Frame:
    """The client frame ``text``; :class:`InvalidInput` naming the field that is wrong."""
    if len(text) > MAX_FRAME_CHARS:
        raise InvalidInput(f"longer than {MAX_FRAME_CHARS} characters", field="frame")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"not JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise InvalidInput(reason, field="frame") from None
    if not isinstance(data, dict):
        raise InvalidInput("must be a JSON object", field="frame")
    model = _FRAMES.get(data.get("op"))  # type: ignore[arg-type]
    if model is None:
        raise InvalidInput(f"must be one of {', '.join(_FRAMES)}", field="op")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(exc, whole="frame") from None


# -- one connection -----------------------------------------------------------------


class LiveConnection:
    """One websocket: its subscriptions, its bounded send queue, its pings."""

    def __init__(self, websocket: WebSocket, hub: EventsHub) -> None:
        settings = get_settings()
        self.websocket = websocket
        self.hub = hub
        self.ping_seconds = settings.live_ping_seconds
        self.send_buffer = settings.live_send_buffer
        self.send_timeout = settings.live_send_timeout
        self._frames: deque[str] = deque()
        self._frames_waiting = asyncio.Event()
        self._subscriptions: dict[str, Subscription] = {}
        self._snapshots: set[asyncio.Task[None]] = set()
        self._ended = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self._last_sent = time.monotonic()

    def offer(self, text: str, *, beyond_limit: bool = False) -> None:
        """Queue ``text`` to be sent; a full queue closes the connection (:data:`SLOW_CLIENT`)."""
        if self._ended.is_set():
            return
        if len(self._frames) >= self.send_buffer and not beyond_limit:
            self.overflow()
            return
        self._frames.append(text)
        self._frames_waiting.set()

    def overflow(self) -> None:
        self._too_slow(f"more than {self.send_buffer} frames waiting to be sent")

    def _too_slow(self, why: str) -> None:
        if not self._ended.is_set():
            SLOW_CLIENTS_CLOSED.inc()
        self._end(SLOW_CLIENT, f"slow client: {why}")

    async def run(self) -> None:
        """Serve the connection until the client leaves or is closed."""
        self.hub.reconnect_listeners.add(self._resync)
        tasks = [
            asyncio.create_task(self._send_frames()),
            asyncio.create_task(self._read_frames()),
            asyncio.create_task(self._ping()),
            asyncio.create_task(self._ended.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.info("websocket ended: %r", task.exception())
        finally:
            self._ended.set()
            self.hub.reconnect_listeners.discard(self._resync)
            for subscription in self._subscriptions.values():
                self.hub.unsubscribe(subscription)
            self._subscriptions.clear()
            for task in [*tasks, *self._snapshots]:
                task.cancel()
            await asyncio.gather(*tasks, *self._snapshots, return_exceptions=True)
        if self._close is not None:
            code, reason = self._close
            log.info("websocket closed with %s: %s", code, reason)
            # the server sends the close frame only once the client has read what
            # was sent before it; a client that never reads must not hold this task
            with suppress(Exception):  # the client may be gone already
                await asyncio.wait_for(self.websocket.close(code, reason), CLOSE_TIMEOUT)

    def _end(self, code: int, reason: str) -> None:
        if not self._ended.is_set():
            self._close = (code, reason)
            self._ended.set()

    async def _send_frames(self) -> None:
        while True:
            while not self._frames:
                self._frames_waiting.clear()
                await self._frames_waiting.wait()
            try:
                # a client that stops reading fills its socket buffers, and the send
                # waits for room: without a bound it would wait forever
                await asyncio.wait_for(
                    self.websocket.send_text(self._frames.popleft()), self.send_timeout
                )
            except TimeoutError:
                self._too_slow(f"a frame waited more than {self.send_timeout:g} s to be sent")
                return
            self._last_sent = time.monotonic()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self.ping_seconds - (time.monotonic() - self._last_sent))
            if time.monotonic() - self._last_sent >= self.ping_seconds:
                self.offer('{"type":"ping"}')
                self._last_sent = time.monotonic()

    async def _read_frames(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                self._error("frame", "must be a text frame holding JSON")
                continue
            try:
                frame = parse_frame(text)
            except InvalidInput as exc:
                self._error(exc.field, exc.reason)
                continue
            if isinstance(frame, Subscribe):
                self._subscribe(frame.topic, frame.limit)
            elif isinstance(frame, Unsubscribe):
                self._unsubscribe(frame.topic)
            else:
                self.offer('{"type":"pong"}')

    def _error(self, field: str, message: str, topic: Topic | None = None) -> None:
        frame: dict[str, Any] = {"type": "error", "field": field, "message": message}
        if topic is not None:
            frame["topic"] = topic.name
        self.offer(json.dumps(frame))

    def _subscribe(self, topic: Topic, limit: int) -> None:
        old = self._subscriptions.pop(topic.name, None)
        if old is not None:
            self.hub.unsubscribe(old)
        elif len(self._subscriptions) >= MAX_SUBSCRIPTIONS:
            self._error("topic", f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection", topic)
            return
        subscription = Subscription(
            topic, self, buffer_limit=SNAPSHOT_BUFFER_FACTOR * self.send_buffer, limit=limit
        )
        self.hub.subscribe(subscription)  # first the bus, then the snapshot
        self._subscriptions[topic.name] = subscription
        self._snapshot_later(subscription)

    def _unsubscribe(self, topic: Topic) -> None:
        subscription = self._subscriptions.pop(topic.name, None)
        if subscription is None:
            self._error("topic", "not subscribed", topic)
            return
        self.hub.unsubscribe(subscription)
        self.offer(json.dumps({"type": "unsubscribed", "topic": topic.name}))

    def _resync(self) -> None:
        for subscription in self._subscriptions.values():
            self._snapshot_later(subscription)

    def _snapshot_later(self, subscription: Subscription) -> None:
        task = asyncio.create_task(self._take_snapshot(subscription))
        self._snapshots.add(task)
        task.add_done_callback(self._snapshots.discard)

    async def _take_snapshot(self, subscription: Subscription) -> None:
        topic = subscription.topic
        try:
            text, versions = await self.hub.snapshot(topic, subscription.limit)
        except AutostepError as exc:
            message = str(exc)
        except Exception:
            reference = uuid.uuid4().hex[:12]
            log.exception("snapshot of %s failed unexpectedly [%s]", topic.name, reference)
            message = f"snapshot failed unexpectedly; the server logged it as [{reference}]"
        else:
            if self._subscriptions.get(topic.name) is subscription:
                subscription.snapshot_taken(text, versions)
            return
        if self._subscriptions.get(topic.name) is subscription:
            self.hub.unsubscribe(self._subscriptions.pop(topic.name))
            self._error("topic", message, topic)


@router.websocket("/ws")
async def live_socket(websocket: WebSocket) -> None:
    """The live grid: subscribe to jobs, workflows and projects (see the module's docstring)."""
    hub: EventsHub | None = getattr(websocket.app.state, "events_hub", None)
    await websocket.accept()
    if hub is None:
        await websocket.close(UNAVAILABLE, "the events hub is not running")
        return
    await LiveConnection(websocket, hub).run()
