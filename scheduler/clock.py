"""The local scheduler's clock: real time, or a simulated timeline for tests and demos.

:class:`autostep.scheduler.local.LocalScheduler` asks its :class:`Clock`
what time it is and waits on it, so a test can run hundreds of ticks in
seconds. :class:`SystemClock` is wall-clock time. :class:`ScaledClock` runs
a simulated timeline ``speed`` times faster than real time from a fixed
pair of origins, so that a scheduler restarted with the same setting goes
on along the same timeline:

    AUTOSTEP_SCHEDULER_CLOCK=2026-03-29T00:00:00Z@1764496000x600

reads "simulated time was 2026-03-29T00:00:00Z at Unix time 1764496000 and
runs 600 times faster" (an every-minute schedule then ticks 10 times a
second). It is a test and demo setting: never set it in production.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from autostep.exceptions import InvalidInput

__all__ = ["CLOCK_SETTING", "Clock", "ScaledClock", "SystemClock", "parse_clock"]

#: The environment variable holding a simulated timeline.
CLOCK_SETTING = "AUTOSTEP_SCHEDULER_CLOCK"
_CLOCK = re.compile(r"^(?P<sim>[^@]+)@(?P<real>\d+(?:\.\d+)?)x(?P<speed>\d+(?:\.\d+)?)$")


class Clock(Protocol):
    """What the scheduler knows of time."""

    def now(self) -> datetime:
        """The current time on this clock, aware, in UTC."""
        ...

    def sleep_until(self, when: datetime, stop: threading.Event, timeout: float) -> None:
        """Return at ``when`` on this clock, or after ``timeout`` real seconds, or on ``stop``."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep_until(self, when: datetime, stop: threading.Event, timeout: float) -> None:
        delay = (when - self.now()).total_seconds()
        stop.wait(max(0.0, min(delay, timeout)))


@dataclass(frozen=True)
class ScaledClock:
    """Simulated time: ``sim_origin`` at Unix time ``real_origin``, ``speed`` times faster."""

    sim_origin: datetime
    real_origin: float
    speed: float

    def now(self) -> datetime:
        return self.sim_origin + timedelta(seconds=(time.time() - self.real_origin) * self.speed)

    def sleep_until(self, when: datetime, stop: threading.Event, timeout: float) -> None:
        delay = (when - self.now()).total_seconds() / self.speed
        stop.wait(max(0.0, min(delay, timeout)))

    def setting(self) -> str:
        """This clock as the value of :data:`CLOCK_SETTING`."""
        sim = self.sim_origin.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return f"{sim}@{self.real_origin:.3f}x{self.speed:g}"


def parse_clock(text: str | None) -> Clock:
    """The clock a setting names: :class:`SystemClock` when empty, else a :class:`ScaledClock`."""
    if not text:
        return SystemClock()
    found = _CLOCK.match(text.strip())
    sim = None
    if found is not None:
        try:
            sim = datetime.fromisoformat(found["sim"])
        except ValueError:
            sim = None
    if found is None or sim is None or sim.tzinfo is None or float(found["speed"]) <= 0:
        raise InvalidInput(
            "must be <simulated RFC 3339 time>@<Unix time>x<speed>, "
            "such as 2026-03-29T00:00:00Z@1764496000x600",
            field=CLOCK_SETTING,
        )
    return ScaledClock(sim.astimezone(UTC), float(found["real"]), float(found["speed"]))
