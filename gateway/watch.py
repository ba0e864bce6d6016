"""``autostep watch``: follow a job, a workflow or a project over the gateway's websocket.

A client of ``/ws`` (:mod:`autostep.gateway.live`) for a terminal or a
script: it subscribes to one topic and prints the snapshot and then each
event, one line each (with ``json_lines``, each frame as it arrived).
Watching a job ends when the job has finished. asyncio only: the CLI
imports this module when ``watch`` runs, never under eventlet.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from typing import Any, TextIO

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

__all__ = ["DEFAULT_URL", "MAX_FRAME_BYTES", "render", "watch"]

DEFAULT_URL = "ws://127.0.0.1:8080/ws"
#: Largest frame accepted from the gateway (a snapshot of a large fan-out).
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: Seconds to wait for the gateway to accept the connection.
OPEN_TIMEOUT = 10.0


def watch(url: str, topic: str, *, json_lines: bool = False, out: TextIO = sys.stdout) -> int:
    """Print ``topic``'s snapshot and events from the gateway at ``url``; the exit code.

    Watching a ``job:`` topic returns once the job has finished: 0 if it
    succeeded, 1 otherwise. Other topics run until interrupted. 1 when the
    gateway refuses the subscription or closes the connection.
    """
    return asyncio.run(_watch(url, topic, json_lines, out))


async def _watch(url: str, topic: str, json_lines: bool, out: TextIO) -> int:
    try:
        async with connect(url, max_size=MAX_FRAME_BYTES, open_timeout=OPEN_TIMEOUT) as socket:
            await socket.send(json.dumps({"op": "subscribe", "topic": topic}))
            async for text in socket:
                frame = json.loads(text)
                line = text if json_lines else render(frame)
                if line:
                    print(line, file=out, flush=True)
                if frame.get("type") == "error":
                    if not json_lines:
                        print(
                            f"autostep: error: {frame['field']}: {frame['message']}",
                            file=sys.stderr,
                        )
                    return 1
                status = _finished_job_status(frame, topic)
                if status is not None:
                    return 0 if status == "succeeded" else 1
    except ConnectionClosed as exc:
        closed = exc.rcvd
        why = f"{closed.code} {closed.reason}".strip() if closed else "connection lost"
        print(f"autostep: error: the gateway closed the connection: {why}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError, InvalidURI, InvalidHandshake) as exc:
        print(f"autostep: error: --url {url}: cannot connect: {exc}", file=sys.stderr)
        return 1
    print("autostep: error: the gateway closed the connection", file=sys.stderr)
    return 1


def _finished_job_status(frame: dict[str, Any], topic: str) -> str | None:
    """The final status of the watched job if ``frame`` shows it has finished."""
    if not topic.startswith("job:"):
        return None
    if frame.get("type") == "snapshot":
        status = frame["job"]["status"]
    elif frame.get("type") == "event" and frame.get("event") == "job.updated":
        status = frame["data"]["status"]
    else:
        return None
    return str(status) if status != "running" else None


def render(frame: dict[str, Any]) -> str:
    """One line for an event or an error; a few for a snapshot; nothing for a ping."""
    kind = frame.get("type")
    if kind == "event":
        now = datetime.now().strftime("%H:%M:%S")
        data = frame["data"]
        if frame["event"] == "job.updated":
            return f"{now} {_job_line(data)}"
        return f"{now}   {_process_line(data)}"
    if kind == "snapshot":
        if "job" in frame:
            job = frame["job"]
            lines = [f"{frame['topic']}: {_job_line(job)}"]
            lines += [f"  {_process_line(p)}" for p in job["processes"]]
        else:
            lines = [f"{frame['topic']}: {len(frame['jobs'])} newest jobs"]
            lines += [f"  {_job_line(job)}" for job in frame["jobs"]]
        return "\n".join(lines)
    if kind == "error":
        return ""
    if kind == "unsubscribed":
        return f"unsubscribed from {frame['topic']}"
    return ""


def _job_line(job: dict[str, Any]) -> str:
    line = f"job {job['id']} {job['status']} (v{job['version']})"
    if job.get("error"):
        line += f"  error: {job['error']}"
    elif job["status"] == "succeeded":
        line += f"  output: {json.dumps(job['output'])}"
    return line


def _process_line(process: dict[str, Any]) -> str:
    item = f"[{process['item_index']}]" if process["item_index"] is not None else ""
    line = f"{process['step']}{item} {process['status']} (v{process['version']})"
    if process["attempt"] > 1:
        line += f" attempt {process['attempt']}"
    if process.get("error"):
        line += f"  error: {process['error']}"
    if process.get("waiting"):
        line += f"  waiting: {process['waiting']}"
    return f"{line}  job {process['job_id']}"
