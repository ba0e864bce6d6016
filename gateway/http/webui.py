"""The web UI: the built single-page app, served by the gateway at ``/ui/``.

The app is built from ``ui/`` (React, TypeScript, Vite) into
:data:`STATIC_DIR`, which is committed and ships in the package, so serving
it needs no Node. ``/`` redirects to ``/ui/``. A path under ``/ui/`` that is
a file of the build is that file; any other is ``index.html``, whose router
draws the page the path names, so deep links (``/ui/jobs/<id>``) work on a
reload. Every API path, ``/ws``, ``/docs``, ``/openapi.json``,
``/metrics`` and the health probes stay as they are: the app lives under
its own prefix and never shadows them.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["PREFIX", "STATIC_DIR", "install_web_ui"]

#: The folder of the built app (``npm run build`` in ``ui/`` writes it).
STATIC_DIR = Path(__file__).resolve().parent / "static" / "ui"
#: Where the app is served; its router's base path.
PREFIX = "/ui"


class _SinglePageApp(StaticFiles):
    """Files of the build; ``index.html`` for any other path, so deep links load the app."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            response = await super().get_response("index.html", scope)
        if path in ("", ".", "index.html") or response.media_type == "text/html":
            # the page names its assets; revalidate it on each visit
            response.headers["Cache-Control"] = "no-cache"
        return response


def install_web_ui(app: FastAPI, static_dir: Path = STATIC_DIR) -> None:
    """Serve the built app at ``/ui/`` and redirect ``/`` there (nothing if it is not built)."""
    if not (static_dir / "index.html").is_file():
        return

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/")

    app.mount(PREFIX, _SinglePageApp(directory=static_dir, html=True), name="ui")
