"""A one-method nameko service: the far end of ``bench/run.py``'s RPC baseline.

``python bench/echo_service.py AMQP_URI`` serves ``bench_echo.echo`` until
SIGTERM or SIGINT, the way ``autostep functions run`` serves step functions
(eventlet patched first, a :class:`~nameko.runners.ServiceRunner`).
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # eventlet announces its deprecation on import
    import eventlet

eventlet.monkey_patch()

import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from nameko import config  # noqa: E402
from nameko.rpc import rpc  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402

__all__ = ["EchoService"]


class EchoService:
    """Returns what it is given."""

    name = "bench_echo"

    @rpc  # type: ignore[untyped-decorator]
    def echo(self, value: Any) -> Any:
        return value


def main(amqp_uri: str) -> None:
    config.update({"AMQP_URI": amqp_uri})
    runner = ServiceRunner()
    runner.add_service(EchoService)

    def shutdown(signum: int, frame: Any) -> None:
        eventlet.spawn_n(runner.stop)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    runner.start()
    print("ready", flush=True)
    runner.wait()


if __name__ == "__main__":
    main(sys.argv[1])
