"""Liveness of the long-running worker processes: heartbeat files and their check.

The HTTP gateway answers ``/healthz``; the other long-running processes
serve no HTTP, so each touches a file named after itself in
``AUTOSTEP_HEALTH_DIR`` (default ``/tmp/autostep-health``; an emptyDir in the
chart) while its loop turns:

- ``relay``: every pass of the relay's loop, and every wait between two
  attempts to reconnect (the loop is alive during an outage: restarting it
  would not help);
- ``functions``: every heartbeat of the function registry
  (:class:`autostep.dependencies.RunnerPresence`; ``nameko run`` too), and the
  runtime's own beat below;
- ``gateway-rpc``, ``scheduler``, ``functions``: every
  ``AUTOSTEP_HEALTH_BEAT_SECONDS`` from a greenlet of the nameko runtime
  (:func:`autostep.nameko_runtime.run_services`), which runs only while the
  process's event loop is not stuck.

``autostep health [COMPONENT...] [--max-age S]`` (:func:`check`) is the
probe a container runs: exit 0 when every named file (or, without names,
every file there is) was touched within ``max_age`` seconds, else 1, with
one line saying which. Touching a file is one ``utime`` call; a beat that
fails (a read-only or full disk) is logged once and never stops the
process, whose probe then fails and says why.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from autostep.settings import get_settings

__all__ = ["COMPONENTS", "Verdict", "beat", "check"]

log = logging.getLogger(__name__)

#: The components that beat, by the name of their file.
COMPONENTS = ("relay", "functions", "gateway-rpc", "scheduler")
_failed_once: set[str] = set()


def _directory(directory: str | Path | None) -> Path:
    return Path(directory if directory is not None else get_settings().health_dir)


def beat(component: str, directory: str | Path | None = None) -> None:
    """Mark ``component`` alive now: touch ``<health dir>/<component>``."""
    path = _directory(directory) / component
    try:
        try:
            os.utime(path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    except OSError as exc:
        if component not in _failed_once:
            _failed_once.add(component)
            log.warning("health: cannot touch %s (%s); its probe will fail", path, exc)


@dataclass(frozen=True)
class Verdict:
    """What :func:`check` found: healthy or not, and one line saying so."""

    healthy: bool
    message: str


def check(
    components: list[str] | None = None,
    *,
    max_age: float,
    directory: str | Path | None = None,
    now: float | None = None,
) -> Verdict:
    """Whether each of ``components`` (default: every file there) beat within ``max_age`` s."""
    where = _directory(directory)
    now = time.time() if now is None else now
    names = components or (sorted(p.name for p in where.iterdir()) if where.is_dir() else [])
    if not names:
        return Verdict(False, f"unhealthy: no heartbeat in {where}")
    ages: dict[str, float | None] = {}
    for name in names:
        try:
            ages[name] = now - (where / name).stat().st_mtime
        except OSError:
            ages[name] = None
    stale = [
        f"{name} never beat" if age is None else f"{name} beat {age:.0f} s ago"
        for name, age in ages.items()
        if age is None or age > max_age
    ]
    if stale:
        return Verdict(False, f"unhealthy: {', '.join(stale)} (max {max_age:g} s, in {where})")
    fresh = ", ".join(f"{name} beat {age:.1f} s ago" for name, age in ages.items())
    return Verdict(True, f"ok: {fresh}")
