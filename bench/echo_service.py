"""A one-method nameko service: the far end of ``bench/run.py``'s RPC baseline.

``python bench/echo_service.py AMQP_URI`` serves ``bench_echo.echo`` until
SIGTERM or SIGINT, exactly the way ``autostep functions run`` serves step
functions (:func:`autostep.nameko_runtime.run_services`).
"""

from __future__ import annotations

from autostep.cooperative import patch_process

patch_process()

import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from nameko.rpc import rpc  # noqa: E402

__all__ = ["EchoService"]


class EchoService:
    """Returns what it is given."""

    name = "bench_echo"

    @rpc  # type: ignore[untyped-decorator]
    def echo(self, value: Any) -> Any:
        return value


def main(amqp_uri: str) -> None:
    os.environ["AUTOSTEP_AMQP_URI"] = amqp_uri
    from autostep.nameko_runtime import run_services

    run_services([EchoService], on_started=lambda: print("ready", flush=True))


if __name__ == "__main__":
    main(sys.argv[1])
