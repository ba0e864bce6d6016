"""A load driver for the HTTP benchmark, run in a process of its own.

``python -m bench.http_load URL --seconds S --clients C [--post JSON]``
sends requests from ``C`` concurrent keep-alive connections for ``S``
seconds and prints one JSON line: requests answered, errors (non-2xx or
transport), requests/s and latency percentiles in ms.

It speaks just enough HTTP/1.1 itself (asyncio streams, one request at a
time per connection, ``Content-Length`` bodies) to cost a fraction of the
server's CPU per request: a full client such as httpx spends about as much
CPU per request as the server under test, and on a small machine the
driver, not the server, would set the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit


def _request(url: str, body: bytes | None) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    head = f"{'GET' if body is None else 'POST'} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return parts.hostname or "127.0.0.1", parts.port or 80, head.encode() + b"\r\n" + (body or b"")


async def _answer(reader: asyncio.StreamReader) -> int:
    """Read one response; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _client(
    url: str, body: bytes | None, until: float, latencies: list[float], errors: list[int]
) -> None:
    host, port, request = _request(url, body)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                writer.write(request)
                ok = 200 <= await _answer(reader) < 300
            except (OSError, asyncio.IncompleteReadError, ValueError):
                ok = False
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors.append(1)
    finally:
        writer.close()


async def _drive(url: str, body: bytes | None, seconds: float, clients: int) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(_client(url, body, until, latencies, errors) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "per_second": len(latencies) / elapsed,
        "p50_ms": cuts[49] * 1000,
        "p99_ms": cuts[98] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--post", help="POST this JSON body instead of GET")
    args = parser.parse_args()
    body = args.post.encode() if args.post is not None else None
    print(json.dumps(asyncio.run(_drive(args.url, body, args.seconds, args.clients))), flush=True)


if __name__ == "__main__":
    main()
