"""The UI's committed ``ui/openapi.json`` is the gateway's OpenAPI document.

The web UI's API types are generated from that file, so a change of the API
that was not carried into it (``npm run api-types`` after writing the new
document, see README "Web UI") fails here. The document is built in a
subprocess: building the FastAPI app in this eventlet-patched process is
not what the gateway does.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.e2e.conftest import REPO_ROOT

COMMITTED = REPO_ROOT / "ui" / "openapi.json"
COMMAND = "python -m autostep.gateway.http.openapi_document > ui/openapi.json"


def current_document() -> str:
    built = subprocess.run(
        [sys.executable, "-m", "autostep.gateway.http.openapi_document"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return built.stdout


def test_committed_openapi_document_is_the_gateways() -> None:
    current = current_document()
    committed = COMMITTED.read_text(encoding="utf-8")
    assert json.loads(committed) == json.loads(current), (
        f"ui/openapi.json is stale: write it again with `{COMMAND}`, "
        "then `npm run api-types` in ui/"
    )
    assert committed == current  # and byte for byte, so the generated types match
