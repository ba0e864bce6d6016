"""Load driver of ``bench/live.py``: websocket clients of ``/ws`` in one asyncio process.

``python bench/live_driver.py URL SECONDS TOPIC:COUNT...`` opens COUNT
connections subscribed to each TOPIC, reads every frame for SECONDS, and
prints one JSON object: the connections that got their snapshot, the
frames received, the seconds from each subscribe to its snapshot
(``snapshot_waits``), and for every ``process.updated`` of a succeeded
step the seconds from its ``finished_at`` (set just before its commit) to
its receipt: ``burst`` for steps that finished before every client had its
snapshot, ``steady`` for the others. It never runs under eventlet.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime

from websockets.asyncio.client import connect


async def _client(url: str, topic: str, until: float, stats: dict[str, list[float] | int]) -> None:
    async with connect(url, max_size=None, open_timeout=60) as socket:
        await socket.send(json.dumps({"op": "subscribe", "topic": topic}))
        subscribed = time.monotonic()
        while (left := until - time.monotonic()) > 0:
            try:
                text = await asyncio.wait_for(socket.recv(), left)
            except TimeoutError:
                return
            now = time.time()
            frame = json.loads(text)
            stats["frames"] += 1  # type: ignore[operator]
            if frame["type"] == "snapshot":
                stats["snapshot_waits"].append(time.monotonic() - subscribed)  # type: ignore[union-attr]
                stats["snapshots"] += 1  # type: ignore[operator]
                if stats["snapshots"] == stats["clients"]:
                    stats["all_subscribed_at"] = now  # type: ignore[assignment]
            elif frame["type"] == "event" and frame["event"] == "process.updated":
                data = frame["data"]
                if data["status"] == "succeeded" and data["finished_at"]:
                    finished = datetime.fromisoformat(data["finished_at"]).timestamp()
                    settled = stats["all_subscribed_at"] and finished > stats["all_subscribed_at"]  # type: ignore[operator]
                    stats["steady" if settled else "burst"].append(now - finished)  # type: ignore[union-attr]


async def main(url: str, seconds: float, topics: list[tuple[str, int]]) -> None:
    stats: dict[str, list[float] | int] = {
        "clients": sum(count for _, count in topics),
        "frames": 0,
        "snapshots": 0,
        "all_subscribed_at": 0,
        "snapshot_waits": [],
        "burst": [],
        "steady": [],
    }
    until = time.monotonic() + seconds
    clients = [_client(url, topic, until, stats) for topic, count in topics for _ in range(count)]
    results = await asyncio.gather(*clients, return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    print(json.dumps({**stats, "errors": errors[:5], "failed": len(errors)}))


if __name__ == "__main__":
    wanted = [(arg.rsplit(":", 1)[0], int(arg.rsplit(":", 1)[1])) for arg in sys.argv[3:]]
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), wanted))
