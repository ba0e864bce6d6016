"""autostep: workflows of typed Python functions, run as nameko services.

The public API for writing step functions and serving them::

    from autostep import PermanentError, RetryableError, StepContext, function, services_for

User code imports only these names. The platform's parts live in subpackages:
the function runners in :mod:`autostep.functions`, the gateway in
:mod:`autostep.gateway`, the scheduler in :mod:`autostep.scheduler` (their
sources are the repository's top-level ``functions/``, ``gateway/`` and
``scheduler/`` folders), the shared core in the other modules here.

Names load lazily, so that ``autostep.cli`` can monkey-patch the process for
eventlet before pydantic, SQLAlchemy or psycopg are imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autostep.exceptions import PermanentError, RetryableError
    from autostep.functions.service import services_for
    from autostep.sdk import StepContext, function

__all__ = ["PermanentError", "RetryableError", "StepContext", "function", "services_for"]
__version__ = "0.1.0"

_HOMES = {
    "PermanentError": "autostep.exceptions",
    "RetryableError": "autostep.exceptions",
    "StepContext": "autostep.sdk",
    "function": "autostep.sdk",
    "services_for": "autostep.functions.service",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'autostep' has no attribute {name!r}")
