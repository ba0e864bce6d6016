"""A websocket subscription's snapshot and events: no gap, nothing stale, bounded.

:class:`~autostep.gateway.events_hub.Subscription` is plain code (no
asyncio), so its rules are checked here event by event; the gateway's
tests (``tests/e2e/test_live.py``) check them on real runs.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

from autostep.gateway.events_hub import Subscription, Topic


class Frames:
    """A subscriber that keeps what it is offered."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.overflows = 0

    def offer(self, text: str, *, beyond_limit: bool = False) -> None:
        self.sent.append(text)

    def overflow(self) -> None:
        self.overflows += 1


def _subscription(buffer_limit: int = 100) -> tuple[Subscription, Frames]:
    frames = Frames()
    topic = Topic("job", uuid.uuid4())
    return Subscription(topic, frames, buffer_limit=buffer_limit), frames


def test_events_wait_for_the_snapshot_and_only_newer_versions_follow_it() -> None:
    subscription, frames = _subscription()
    # committed while the snapshot was read: the snapshot holds job v2 and process a v1
    subscription.deliver("job:j", 2, "job v2")
    subscription.deliver("process:a", 1, "a v1")
    subscription.deliver("process:a", 2, "a v2")
    subscription.deliver("process:b", 1, "b v1")  # created after the snapshot was read
    assert frames.sent == []

    subscription.snapshot_taken("snapshot", {"job:j": 2, "process:a": 1})
    subscription.deliver("process:a", 2, "a v2 again")  # a relay published it twice
    subscription.deliver("job:j", 3, "job v3")
    subscription.deliver("process:b", 2, "b v2")

    assert frames.sent == ["snapshot", "a v2", "b v1", "job v3", "b v2"]


def test_buffering_again_waits_for_a_new_snapshot() -> None:
    subscription, frames = _subscription()
    subscription.snapshot_taken("snapshot 1", {"job:j": 1})
    subscription.buffer_again()  # the broker came back: events may have been missed
    subscription.deliver("job:j", 3, "job v3")
    subscription.snapshot_taken("snapshot 2", {"job:j": 3})
    subscription.deliver("job:j", 4, "job v4")
    assert frames.sent == ["snapshot 1", "snapshot 2", "job v4"]


def test_a_snapshot_that_takes_too_long_overflows_the_subscriber() -> None:
    subscription, frames = _subscription(buffer_limit=2)
    for version in (1, 2):
        subscription.deliver("job:j", version, f"job v{version}")
    assert frames.overflows == 0
    subscription.deliver("job:j", 3, "job v3")
    assert frames.overflows == 1


def test_the_websocket_modules_load_neither_eventlet_nor_nameko() -> None:
    probe = (
        "import sys, autostep.gateway.live, autostep.gateway.watch, autostep.cli;"
        "loaded = {m.split('.')[0] for m in sys.modules} & {'eventlet', 'nameko', 'kombu'};"
        "sys.exit(str(sorted(loaded)) if loaded else 0)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_watch_prints_one_line_per_event() -> None:
    from autostep.gateway.watch import render

    process = {
        "id": "p1",
        "job_id": "j1",
        "step": "fan",
        "item_index": 2,
        "status": "failed",
        "version": 3,
        "attempt": 2,
        "error": "boom",
        "waiting": None,
    }
    job = {"id": "j1", "status": "running", "version": 1, "error": None, "output": None}
    event = render({"type": "event", "event": "process.updated", "data": process})
    assert event.endswith("fan[2] failed (v3) attempt 2  error: boom  job j1")
    assert "\n" not in event
    snapshot = render(
        {"type": "snapshot", "topic": "job:j1", "job": {**job, "processes": [process]}}
    )
    assert snapshot.splitlines() == [
        "job:j1: job j1 running (v1)",
        "  fan[2] failed (v3) attempt 2  error: boom  job j1",
    ]
    assert render({"type": "ping"}) == ""
