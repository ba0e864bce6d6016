"""Limits on request bodies, checked before an endpoint reads them.

A body larger than ``AUTOSTEP_MAX_PAYLOAD_BYTES`` is refused with 413,
from its ``Content-Length`` before a byte is read, or as soon as a chunked
body grows past the limit; a body whose content type is not JSON is refused
with 415. Both answer with problem details and nothing is written: the
endpoint never runs.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autostep.gateway.http.problems import problem_response

__all__ = ["BodyLimits"]

_log = logging.getLogger(__name__)

#: Methods whose body an endpoint reads.
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class BodyLimits:
    """ASGI middleware: 413 for bodies over ``max_bytes``, 415 for bodies that are not JSON."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        has_body = chunked or (length is not None and length.strip() != "0")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, receive, send, 413, int(length))
            return
        if has_body and not _is_json(headers.get("content-type", "")):
            await self._refuse(scope, receive, send, 415, 0)
            return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # The endpoint is still reading, so nothing was sent yet: answer
                    # now, and let the endpoint see a client that went away.
                    refused = True
                    await self._refuse(scope, receive, send, 413, received)
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, unless_refused)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, size: int
    ) -> None:
        if status == 413:
            detail = f"the body is over the limit of {self.max_bytes} bytes ({size} bytes or more)"
            kind = "payload-too-large"
        else:
            detail = "the body must be JSON (Content-Type: application/json)"
            kind = "unsupported-media-type"
        _log.info("%s %s: %s %s", scope["method"], scope["path"], status, detail)
        response = problem_response(scope["path"], status, kind, detail)
        await response(scope, receive, send)
