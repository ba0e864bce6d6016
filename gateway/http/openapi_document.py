"""Prints the gateway's OpenAPI document as the web UI commits it (``ui/openapi.json``).

``python -m autostep.gateway.http.openapi_document > ui/openapi.json``, then
``npm run api-types`` in ``ui/`` regenerates the UI's API types from it; a
unit test fails while the committed file differs from what this prints.
"""

from __future__ import annotations

import json

from autostep.gateway.http.app import create_app

__all__ = ["document", "main"]


def document() -> str:
    """The document: keys sorted, indented, so its diffs read well."""
    return json.dumps(create_app().openapi(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    print(document(), end="")


if __name__ == "__main__":
    main()
