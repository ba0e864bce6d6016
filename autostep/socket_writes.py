"""Fewer socket writes for py-amqp: frames gathered, then sent together.

py-amqp sends every frame set (a publish, an ack) with a socket write of its
own. On loopback TCP each write also runs the receiving side's network
stack, so a batch of a hundred messages costs a hundred system calls in the
sender and as many reads in the broker. :func:`corked` gathers what a block
writes and sends it in one write (or one per :data:`CORK_BYTES`). The relay
and the runner's dispatcher publish a batch this way
(:mod:`autostep.confirmed`), and a function runner settles a group's
messages this way (:mod:`autostep.functions.entrypoint`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["CORK_BYTES", "corked"]

#: Frames gathered for one socket write at most.
CORK_BYTES = 256 * 1024


@contextlib.contextmanager
def corked(transport: Any) -> Iterator[None]:
    """Gather what is written to ``transport`` meanwhile, and send it in few writes.

    ``transport`` is py-amqp's (its ``write`` sends through ``_write``, the
    socket's ``sendall``); frames reach the socket in the order written, in
    writes of about :data:`CORK_BYTES`. Nothing written in the block may
    wait for an answer. What was gathered when the block raises is sent
    anyway: frames already written are part of the channel's state (its
    delivery tags), and the broker must see them. A write that fails raises
    what the transport's ``write`` raises, at the end of the block.
    """
    send = transport._write
    pending = bytearray()

    def gather(data: Any) -> None:
        pending.extend(data)  # a copy: py-amqp reuses its frame buffer
        if len(pending) >= CORK_BYTES:
            send(bytes(pending))
            pending.clear()

    transport._write = gather
    try:
        yield
    finally:
        transport._write = send
        if pending:
            transport.write(bytes(pending))
