"""A load driver for the HTTP benchmark, run in a process of its own.

``python -m bench.http_load URL --seconds S --clients C [--post JSON]``
sends requests from ``C`` concurrent keep-alive clients (asyncio + httpx)
for ``S`` seconds and prints one JSON line: requests answered, errors
(non-2xx or transport), requests/s and latency percentiles in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx


async def _client(
    url: str, body: bytes | None, until: float, latencies: list[float], errors: list[int]
) -> None:
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=30) as client:
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                if body is None:
                    answer = await client.get(url)
                else:
                    answer = await client.post(url, content=body, headers=headers)
                ok = answer.is_success
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors.append(1)


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
