"""Makes psycopg cooperate with eventlet, the green-thread hub nameko runs on.

psycopg 3 waits for the server in C (``wait_c``) unless it sees *gevent*
patching; under eventlet that blocks the whole hub, so four green threads
running ``pg_sleep(0.5)`` take 2 s instead of 0.5 s. Once eventlet has patched
``select``, :func:`make_psycopg_cooperative` switches psycopg to its
``select``-based wait function, which eventlet turns into a hub wait.
Every process entry point calls it; it is idempotent and does nothing in a
process without eventlet.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["eventlet_patched", "make_psycopg_cooperative", "patch_process"]


def patch_process() -> None:
    """Monkey-patch this process for eventlet and make psycopg cooperative.

    Call it first thing in a process that runs nameko services, before
    anything starts threads or opens sockets.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eventlet announces its deprecation on import
        import eventlet

    eventlet.monkey_patch()
    make_psycopg_cooperative()


def eventlet_patched() -> bool:
    """Whether eventlet has monkey-patched ``select`` in this process."""
    patcher = sys.modules.get("eventlet.patcher")
    return bool(patcher and patcher.is_monkey_patched("select"))


def make_psycopg_cooperative() -> bool:
    """Point psycopg at a wait function eventlet can switch on; True if it did."""
    if not eventlet_patched():
        return False
    import psycopg.waiting

    psycopg.waiting.wait = psycopg.waiting.wait_select
    return True
