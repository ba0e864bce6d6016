"""The Celery side of ``bench/peers.py``: the app, its ``fibo`` task and the load driver.

It runs only in the virtual environment ``peers.py`` makes for it
(``bench/.peers-venv``), never in autostep's: Celery is no dependency of
autostep. ``peers.py`` starts the worker as::

    bench/.peers-venv/bin/celery -A bench.peers_celery worker -P prefork -c 2

and the driver as ``bench/.peers-venv/bin/python -m bench.peers_celery
chain|burst ...``, which prints its figures as one line of JSON.

The setup is Celery's default one but for the result backend: ``rpc://``
(results travel back as AMQP messages to the client that sent the chain,
the lightest backend that lets a client wait for a chain), JSON
serialisation, the pyamqp transport, a durable classic queue ``celery``,
persistent task messages, no publisher confirms, and the message
acknowledged when a task starts (``acks_late`` off).
``PEERS_DURABLE=1`` switches to a quorum queue, publisher confirms and
``acks_late``: closer to what autostep guarantees, at a price.

The broker comes from ``PEERS_BROKER_URL`` (a vhost of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from celery import Celery, chain

DURABLE = os.environ.get("PEERS_DURABLE") == "1"

app = Celery("peers", broker=os.environ.get("PEERS_BROKER_URL", "amqp://guest:guest@127.0.0.1//"))
app.conf.update(
    result_backend="rpc://",
    broker_connection_retry_on_startup=True,
)
if DURABLE:
    app.conf.update(
        task_default_queue_type="quorum",
        broker_transport_options={"confirm_publish": True},
        task_acks_late=True,
    )


def _fib(n: int) -> int:
    # The same naive recursion as autostep's built-in ``fibo``.
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


@app.task(name="fibo")
def fibo(n: int) -> dict[str, int]:
    """The n-th Fibonacci number, computed naively; the same output as autostep's ``fibo``."""
    return {"n": n, "value": _fib(n)}


def _chain(steps: int, n: int) -> Any:
    # Immutable signatures: every step computes fibo(n), as every autostep step has config {n}.
    return chain(*[fibo.si(n) for _ in range(steps)])


def chain_runs(steps: int, runs: int, n: int, timeout: float) -> dict[str, Any]:
    """One warm-up, then ``runs`` chains one after another, submit to the last result."""
    t0 = time.perf_counter()
    value = _chain(steps, n).apply_async().get(timeout=timeout)
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        value = _chain(steps, n).apply_async().get(timeout=timeout)
        times.append(time.perf_counter() - t0)
    return {"warmup_s": warmup, "runs_s": times, "value": value}


def burst(chains: int, steps: int, n: int, timeout: float) -> dict[str, Any]:
    """``chains`` chains submitted together; seconds from the first submit to the last result."""
    _chain(steps, n).apply_async().get(timeout=timeout)  # connections and consumer warm
    signatures = [_chain(steps, n) for _ in range(chains)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    results = [signature.apply_async() for signature in signatures]
    submitted = time.perf_counter() - t0
    values = [result.get(timeout=timeout) for result in results]
    elapsed = time.perf_counter() - t0
    return {
        "submit_s": submitted,
        "elapsed_s": elapsed,
        "driver_cpu_s": time.process_time() - cpu0,
        "steps": chains * steps,
        "steps_per_s": chains * steps / elapsed,
        "value": values[-1],
    }


def ping(timeout: float) -> dict[str, Any]:
    """One task through the worker: it consumes."""
    return {"value": fibo.delay(1).get(timeout=timeout)}


def config() -> dict[str, Any]:
    """The settings that decide durability and delivery, as Celery resolved them."""
    conf = app.conf
    return {
        "queue": conf.task_default_queue,
        "queue_type": conf.task_default_queue_type,
        "task_default_delivery_mode": conf.task_default_delivery_mode,
        "confirm_publish": bool(conf.broker_transport_options.get("confirm_publish", False)),
        "task_acks_late": conf.task_acks_late,
        "worker_prefetch_multiplier": conf.worker_prefetch_multiplier,
        "result_backend": conf.result_backend,
        "result_persistent": bool(conf.result_persistent),
        "serializer": conf.task_serializer,
    }


def versions() -> dict[str, str]:
    import amqp
    import billiard
    import celery
    import kombu

    return {
        "python": sys.version.split()[0],
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "amqp": amqp.__version__,
        "billiard": billiard.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the Celery load driver of bench/peers.py")
    parser.add_argument("what", choices=("chain", "burst", "ping", "config", "versions"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chains", type=int, default=100)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    if args.what == "versions":
        out: dict[str, Any] = versions()
    elif args.what == "config":
        out = config()
    elif args.what == "ping":
        out = ping(args.timeout)
    elif args.what == "chain":
        out = chain_runs(args.steps, args.runs, args.n, args.timeout)
    else:
        out = burst(args.chains, args.steps, args.n, args.timeout)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
