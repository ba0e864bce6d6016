"""Kinds of triggers, their configs, and when a cron schedule fires.

A trigger's ``kind`` names one entry of :data:`KINDS`: a pydantic model of
its ``config`` (extra keys refused). Adding a kind is one model registered
with :func:`register`. :func:`parse_config` validates a config for
:mod:`autostep.triggers` and names the bad field (``config.schedule``).

Cron schedules follow the Kubernetes CronJob grammar (the robfig/cron
parser its controller uses): exactly five fields (minute, hour, day of
month, month, day of week), each ``*`` or ``?``, a number, a range ``a-b``,
a step ``*/n``, ``a/n`` or ``a-b/n``, or a comma list of those; month names
``JAN``-``DEC`` and day names ``SUN``-``SAT`` in any case; days of week
0-6 (0 is Sunday); and the macros ``@yearly``, ``@annually``, ``@monthly``,
``@weekly``, ``@daily``, ``@midnight``, ``@hourly``. Refused: a sixth
(seconds) field, ``L``, ``W``, ``#``, ``H``, ``R``, wrapping ranges such as
``50-10``, ``@reboot``, ``@every`` and ``TZ=`` (the zone is
``config.time_zone``). When the day of month and the day of week are both
restricted a day matching either fires; when one starts with ``*`` or ``?``
both must match (``*/2`` counts as starred, as in cron).

Time zones and daylight saving time, as Kubernetes does it: a schedule is
read as wall-clock time in ``time_zone``, and a tick is every instant whose
wall-clock time matches. So on a spring-forward day a wall time that does
not exist (02:30 in Europe/Berlin on the last Sunday of March) does not
fire at all, not even an hour later; on a fall-back day a wall time that
happens twice (02:30 on the last Sunday of October) fires twice, once per
UTC offset. :func:`next_fire_times` and :func:`fire_times_before` give those
instants in UTC; croniter computes the wall times.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from autostep.exceptions import InvalidInput
from autostep.validation import JobInput, invalid_input

__all__ = [
    "KINDS",
    "CronConfig",
    "CronSchedule",
    "KindConfig",
    "ManualConfig",
    "WebhookConfig",
    "fire_times_before",
    "next_fire_times",
    "parse_config",
    "parse_schedule",
    "register",
]

#: Macros and the five fields they stand for.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day of month", 1, 31, {}),
    _Field("month", 1, 12, {name: number for number, name in enumerate(_MONTHS, 1)}),
    _Field("day of week", 0, 6, {name: number for number, name in enumerate(_DAYS)}),
)
_PART = re.compile(r"^(?:(?P<star>[*?])|(?P<low>\w+)(?:-(?P<high>\w+))?)(?:/(?P<step>\d+))?$")
#: Wall times of a fall-back day come back at most this much later (2 h in
#: Antarctica/Troll); iterations look this far beyond what they return.
_DST_SHIFT = timedelta(hours=3)
#: The walk's margin in a zone whose offset never changes (see _instants).
_FIXED_MARGIN = timedelta(minutes=1)
#: A schedule that fires less than once in this many years is refused.
_MAX_YEARS = 8


@dataclass(frozen=True)
class CronSchedule:
    """A parsed schedule: five numeric fields croniter reads, and how days combine."""

    expression: str
    #: Whether a day matching either day field fires (both day fields restricted).
    day_or: bool


class KindConfig(BaseModel):
    """Base of every kind's config: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The variables a trigger's ``input_template`` (CEL) reads.
    variables: ClassVar[tuple[str, ...]] = ("trigger",)


class CronConfig(KindConfig):
    """A schedule in a time zone, with what to do about overlaps and missed ticks."""

    #: ``scheduled_time``: the tick as RFC 3339 UTC; ``trigger``: its id and name.
    variables: ClassVar[tuple[str, ...]] = ("scheduled_time", "trigger")

    schedule: str = Field(min_length=1, max_length=200)
    #: An IANA zone name; the schedule is read as wall-clock time there.
    time_zone: str = "UTC"
    #: A tick while a run of this trigger is still running: start another
    #: (allow), skip the tick (forbid), or cancel the running one first (replace).
    concurrency: Literal["allow", "forbid", "replace"] = "allow"
    #: Ticks missed while nothing fired: none (skip), the newest (latest), or
    #: every one oldest first up to ``catch_up_limit`` (all).
    catch_up: Literal["skip", "latest", "all"] = "latest"
    catch_up_limit: int = Field(default=10, ge=1, le=100)
    #: A tick starting later than this many seconds after its time is skipped.
    starting_deadline_seconds: int | None = Field(default=None, ge=10)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        with _refused():
            parse_schedule(value)
        return value.strip()

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        with _refused():
            _zone(value)
        return value

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.time_zone)


@contextmanager
def _refused() -> Iterator[None]:
    """A ValueError inside as pydantic's error with the message alone (no "Value error, ")."""
    try:
        yield
    except ValueError as exc:
        raise PydanticCustomError("refused", "{reason}", {"reason": str(exc)}) from None


class WebhookConfig(KindConfig):
    """A URL that starts a run when called with the trigger's token."""

    #: ``body``: the JSON body; ``headers``: lower-cased names, the token left out.
    variables: ClassVar[tuple[str, ...]] = ("body", "headers", "trigger")

    #: Largest body accepted, in bytes; None: the payload limit of the installation.
    max_body_bytes: int | None = Field(default=None, ge=1)


class ManualConfig(KindConfig):
    """A button: starts a run with ``input`` (a caller may override its keys)."""

    #: ``preset``: ``config.input``; ``input``: what the caller sent.
    variables: ClassVar[tuple[str, ...]] = ("preset", "input", "trigger")

    input: JobInput = Field(default_factory=dict)


#: Every kind of trigger and the model of its config.
KINDS: dict[str, type[KindConfig]] = {}


def register(kind: str) -> Callable[[type[KindConfig]], type[KindConfig]]:
    """Register the config model of a new kind of trigger under ``kind``."""

    def add(model: type[KindConfig]) -> type[KindConfig]:
        KINDS[kind] = model
        return model

    return add


register("cron")(CronConfig)
register("webhook")(WebhookConfig)
register("manual")(ManualConfig)


def parse_config(kind: str, config: Any) -> KindConfig:
    """``config`` validated for ``kind``; :class:`InvalidInput` naming ``config.<field>``."""
    model = KINDS.get(kind)
    if model is None:
        raise InvalidInput(
            f"unknown kind {kind!r}; the kinds are {', '.join(sorted(KINDS))}", field="kind"
        )
    if not isinstance(config, dict):
        raise InvalidInput("must be a JSON object", field="config")
    try:
        return model.model_validate(config)
    except ValidationError as exc:
        raise invalid_input(exc, "config", whole="config") from None


def parse_schedule(schedule: str) -> CronSchedule:
    """``schedule`` in the Kubernetes grammar as croniter's fields; ValueError if refused."""
    return _parse_schedule(schedule.strip())


@lru_cache(maxsize=1024)
def _parse_schedule(schedule: str) -> CronSchedule:
    if schedule.startswith("@"):
        if schedule.lower() not in MACROS:
            raise ValueError(
                f"{schedule.split()[0]!r} is not supported; use five fields or one of "
                + ", ".join(MACROS)
            )
        schedule = MACROS[schedule.lower()]
    if "=" in schedule:
        raise ValueError("a time zone goes in config.time_zone, not in the schedule")
    parts = schedule.split()
    if len(parts) != 5:
        raise ValueError(
            f"has {len(parts)} fields; a schedule has exactly 5: "
            "minute hour day-of-month month day-of-week"
        )
    fields = [_parse_field(text, spec) for text, spec in zip(parts, _FIELDS, strict=True)]
    starred = parts[2][0] in "*?" or parts[4][0] in "*?"
    parsed = CronSchedule(" ".join(fields), day_or=not starred)
    if not _instants(parsed, ZoneInfo("UTC"), datetime(2000, 1, 1, tzinfo=UTC), forward=True):
        raise ValueError("never fires (no such day)")
    return parsed


def _parse_field(text: str, spec: _Field) -> str:
    values: set[int] = set()
    for part in text.split(","):
        found = _PART.match(part.lower())
        if found is None:
            raise ValueError(f"{spec.name} {text!r} is not valid: {_hint(part)}")
        step = int(found["step"]) if found["step"] is not None else 1
        if step == 0:
            raise ValueError(f"{spec.name} {text!r}: a step must be at least 1")
        if found["star"]:
            if step == 1:
                if text in ("*", "?"):
                    return "*"
                values.update(range(spec.low, spec.high + 1))
                continue
            low, high = spec.low, spec.high
        else:
            low = _value(found["low"], spec, text)
            high = _value(found["high"], spec, text) if found["high"] else low
            if found["step"] is not None and not found["high"]:
                high = spec.high  # ``a/n``: from a to the end, every n
            if low > high:
                raise ValueError(f"{spec.name} {text!r}: range {low}-{high} runs backwards")
        values.update(range(low, high + 1, step))
    return ",".join(str(value) for value in sorted(values))


def _value(text: str, spec: _Field, whole: str) -> int:
    if text.isdigit():
        value = int(text)
    elif text in spec.names:
        value = spec.names[text]
    else:
        problem = f"{text.upper()!r} is not a value here; {_hint(text)}"
        raise ValueError(f"{spec.name} {whole!r}: {problem}")
    if not spec.low <= value <= spec.high:
        raise ValueError(f"{spec.name} {whole!r}: {value} is outside {spec.low}-{spec.high}")
    return value


def _hint(part: str) -> str:
    if any(mark in part.upper() for mark in ("L", "W", "#")):
        return "L, W and # are not supported"
    return "use *, a number, a range a-b, a step */n or a-b/n, or a comma list"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{name!r} is not a known time zone; use an IANA name such as Europe/Berlin"
        ) from None


def next_fire_times(config: CronConfig, after: datetime, count: int = 5) -> list[datetime]:
    """The first ``count`` ticks of ``config`` strictly after ``after``, as UTC datetimes."""
    schedule = parse_schedule(config.schedule)
    return _instants(schedule, config.zone, after, forward=True, count=count)


def fire_times_before(
    config: CronConfig, until: datetime, *, after: datetime, count: int
) -> list[datetime]:
    """The newest ``count`` ticks in (``after``, ``until``], oldest first, as UTC datetimes."""
    schedule = parse_schedule(config.schedule)
    found = _instants(schedule, config.zone, until, forward=False, count=count, bound=after)
    return sorted(found)


def _instants(
    schedule: CronSchedule,
    zone: ZoneInfo,
    pivot: datetime,
    *,
    forward: bool,
    count: int = 1,
    bound: datetime | None = None,
) -> list[datetime]:
    """Up to ``count`` ticks after ``pivot`` (forward) or at/before it (back), nearest first.

    croniter walks naive wall-clock times; each becomes the instants that
    show that wall time in ``zone`` (none in a spring-forward gap, two in a
    fall-back overlap). Instants come out of wall-time order by at most
    :data:`_DST_SHIFT`, so the walk goes that far beyond the last one kept
    (in a zone without offset changes, such as UTC, they come in order: a
    minute is enough, which saves a few hundred croniter steps on a frequent
    schedule).
    ``bound``: going back, stop at ticks at or before it.
    """
    if pivot.tzinfo is None:
        raise ValueError("pivot must be an aware datetime")
    local = _wall(pivot, zone)
    margin = _FIXED_MARGIN if _fixed_offset(zone) else _DST_SHIFT
    start = local - margin if forward else local + margin
    walk = croniter(
        schedule.expression,
        start,
        day_or=schedule.day_or,
        max_years_between_matches=_MAX_YEARS,
    )
    found: list[datetime] = []
    for wall in _walls(walk, forward):
        for instant in _wall_instants(wall, zone):
            if (instant > pivot) if forward else (instant <= pivot):
                found.append(instant)
        found.sort(reverse=not forward)
        if bound is not None and not forward and wall < _wall(bound, zone) - margin:
            break
        if len(found) >= count:
            edge = _wall(found[count - 1], zone)
            if (wall - edge if forward else edge - wall) > margin:
                break
    if bound is not None:
        found = [instant for instant in found if instant > bound]
    return found[:count]


#: Zones whose offset from UTC never changes (the ``Etc/`` zones are fixed offsets too).
_FIXED_ZONES = frozenset({"UTC", "UCT", "GMT", "Universal", "Zulu", "Greenwich"})


def _fixed_offset(zone: ZoneInfo) -> bool:
    return zone.key in _FIXED_ZONES or zone.key.startswith("Etc/")


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _walls(walk: croniter, forward: bool) -> Iterator[datetime]:
    step = walk.get_next if forward else walk.get_prev
    while True:
        try:
            yield step(datetime)
        except CroniterError:  # no match within _MAX_YEARS
            return


def _wall_instants(wall: datetime, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants whose wall-clock time in ``zone`` is ``wall``: none, one or two."""
    instants = []
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if _wall(instant, zone) == wall and instant not in instants:
            instants.append(instant)
    return sorted(instants)
