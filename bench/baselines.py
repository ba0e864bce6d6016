"""Baselines: what the pieces under autostep cost on their own, on this machine.

- PostgreSQL: commits of a two-insert transaction (the smallest unit of
  work autostep commits), 1 and 4 clients;
- RabbitMQ: a persistent publish to a durable queue awaiting its publisher
  confirm, one after another (what the relay's critical path pays per batch),
  for a classic and a quorum queue;
- nameko: a round trip of an RPC to a one-method service in another process
  (what one hop through nameko's AMQP machinery costs, both ways).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable

import amqp
import psycopg

from bench.report import median
from bench.resources import ROOT, Platform, libpq

__all__ = ["confirmed_publishes", "nameko_rpc", "postgres_commits", "wait_until"]


def postgres_commits(plat: Platform, seconds: float, clients: int) -> dict[str, float]:
    """Commits/s of a two-insert transaction, ``clients`` connections in parallel."""
    dsn = libpq(plat.database_url)
    with psycopg.connect(dsn, autocommit=True) as db:
        for table in ("bench_a", "bench_b"):
            db.execute(f"CREATE TABLE IF NOT EXISTS {table} (id uuid PRIMARY KEY, payload jsonb)")
    latencies: list[list[float]] = [[] for _ in range(clients)]
    payload = json.dumps({"n": 10, "value": 55})
    stop_at = time.perf_counter() + seconds

    def work(index: int) -> None:
        with psycopg.connect(dsn) as db:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                with db.transaction():
                    db.execute("INSERT INTO bench_a VALUES (%s, %s)", (uuid.uuid4(), payload))
                    db.execute("INSERT INTO bench_b VALUES (%s, %s)", (uuid.uuid4(), payload))
                latencies[index].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    every = [x for lat in latencies for x in lat]
    return {"tx_per_s": len(every) / elapsed, "median_ms": median(every) * 1000}


def confirmed_publishes(plat: Platform, count: int, queue_type: str) -> dict[str, float]:
    """Sequential persistent publishes to a durable queue, each awaiting its confirm."""
    from autostep.settings import amqp_params

    conn = amqp.Connection(**amqp_params(plat.amqp_uri))
    conn.connect()
    try:
        channel = conn.channel()
        channel.confirm_select()
        queue = f"bench.confirm.{queue_type}"
        channel.queue_declare(
            queue, durable=True, auto_delete=False, arguments={"x-queue-type": queue_type}
        )
        body = json.dumps({"process_id": str(uuid.uuid4()), "input": {"n": 10}})
        times = []
        t_all = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            message = amqp.Message(body, content_type="application/json", delivery_mode=2)
            channel.basic_publish_confirm(message, exchange="", routing_key=queue, mandatory=True)
            times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - t_all
        channel.queue_delete(queue)
    finally:
        conn.close()
    return {"median_ms": median(times) * 1000, "per_s": count / elapsed}


def nameko_rpc(plat: Platform, count: int) -> dict[str, float]:
    """Sequential nameko RPC round trips to ``bench_echo`` in another process."""
    from nameko.standalone.rpc import ClusterRpcClient

    # A reply racing the client's channel close is logged by py-amqp; harmless here.
    logging.getLogger("amqp").setLevel(logging.ERROR)
    plat.spawn("echo", str(ROOT / "bench" / "echo_service.py"), plat.amqp_uri)
    try:
        times = []
        with ClusterRpcClient(uri=plat.amqp_uri, timeout=30) as client:
            wait_until(lambda: client.bench_echo.echo(0) == 0, 60, plat, "echo service")
            for _ in range(20):
                client.bench_echo.echo(1)
            t_all = time.perf_counter()
            for i in range(count):
                t0 = time.perf_counter()
                if client.bench_echo.echo(i) != i:
                    raise RuntimeError("echo gave something else back")
                times.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - t_all
    finally:
        plat.stop("echo")
    return {"median_ms": median(times) * 1000, "per_s": count / elapsed}


def wait_until(check: Callable[[], bool], timeout: float, plat: Platform, what: str) -> None:
    """Call ``check`` until it returns True; exceptions mean "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        plat.check_alive()
        try:
            if check():
                return
        except Exception:  # not up yet: a queue or a service is missing
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout}s")
