"""pytest plugin for autostep's own tests: eventlet before anything else.

Loaded with ``-p autostep.testing`` (see pyproject.toml). nameko containers
run in the test process, so eventlet must patch the standard library before
the tests import psycopg, kombu or threading users; this is what the
``pytest-eventlet`` plugin does, without the extra dependency.
"""

from __future__ import annotations

from typing import Any

__all__ = ["pytest_load_initial_conftests"]


def pytest_load_initial_conftests(early_config: Any, parser: Any, args: Any) -> None:
    from autostep.cooperative import patch_process

    patch_process()
