"""Trigger configs: the Kubernetes cron grammar, time zones, and fire times across DST."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from autostep.exceptions import InvalidInput
from autostep.trigger_kinds import (
    CronConfig,
    fire_times_before,
    next_fire_times,
    parse_config,
)


def cron(schedule: str, time_zone: str = "UTC", **rest: Any) -> CronConfig:
    config = parse_config("cron", {"schedule": schedule, "time_zone": time_zone, **rest})
    assert isinstance(config, CronConfig)
    return config


def local(times: list[datetime], zone: str) -> list[str]:
    return [t.astimezone(cron("@daily", zone).zone).isoformat() for t in times]


@pytest.mark.parametrize(
    "schedule",
    [
        "* * * * *",
        "*/15 * * * *",
        "0 9-17 * * MON-FRI",
        "0 0 1 jan,Jul *",
        "5/15 * * * *",
        "0 0 ? * ?",
        "30 2 1-31/2 * sun",
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@Daily",
        "@midnight",
        "@hourly",
        "0 0 29 2 *",
    ],
)
def test_kubernetes_schedules_are_accepted(schedule: str) -> None:
    assert next_fire_times(cron(schedule), datetime(2026, 1, 1, tzinfo=UTC), 1)


@pytest.mark.parametrize(
    ("schedule", "complaint"),
    [
        ("* * * * * *", "exactly 5"),
        ("* * * *", "exactly 5"),
        ("0 0 L * *", "L, W and #"),
        ("0 0 15W * *", "L, W and #"),
        ("0 0 * * 5#2", "L, W and #"),
        ("H * * * *", "not a value"),
        ("@reboot", "not supported"),
        ("@every 5m", "not supported"),
        ("TZ=Europe/Berlin 0 0 * * *", "config.time_zone"),
        ("60 * * * *", "outside 0-59"),
        ("0 24 * * *", "outside 0-23"),
        ("0 0 0 * *", "outside 1-31"),
        ("0 0 * 13 *", "outside 1-12"),
        ("0 0 * * 7", "outside 0-6"),
        ("50-10 * * * *", "backwards"),
        ("*/0 * * * *", "at least 1"),
        ("*/5/5 * * * *", "not valid"),
        ("0 0 30 2 *", "never fires"),
        ("", "at least 1 character"),
    ],
)
def test_other_schedules_are_refused_naming_the_field(schedule: str, complaint: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        cron(schedule)
    assert refused.value.field == "config.schedule"
    assert complaint in refused.value.reason


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../../etc/passwd", "utc+2"])
def test_unknown_time_zones_are_refused(zone: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        cron("@daily", zone)
    assert refused.value.field == "config.time_zone"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"schedule": "@daily", "concurrency": "sometimes"}, "config.concurrency"),
        ({"schedule": "@daily", "catch_up": "never"}, "config.catch_up"),
        ({"schedule": "@daily", "catch_up_limit": 101}, "config.catch_up_limit"),
        (
            {"schedule": "@daily", "starting_deadline_seconds": 5},
            "config.starting_deadline_seconds",
        ),
        ({"schedule": "@daily", "seconds": 1}, "config.seconds"),
        ({}, "config.schedule"),
    ],
)
def test_bad_cron_settings_name_their_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_config("cron", config)
    assert refused.value.field == field


def test_defaults() -> None:
    config = cron("@daily")
    assert (config.time_zone, config.concurrency, config.catch_up, config.catch_up_limit) == (
        "UTC",
        "allow",
        "latest",
        10,
    )
    assert config.starting_deadline_seconds is None


def test_unknown_kinds_and_other_kinds_configs() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_config("email", {})
    assert refused.value.field == "kind"
    with pytest.raises(InvalidInput) as refused:
        parse_config("manual", {"input": [1]})
    assert refused.value.field == "config.input"
    with pytest.raises(InvalidInput) as refused:
        parse_config("webhook", {"secret": "x"})
    assert refused.value.field == "config.secret"
    assert parse_config("webhook", {}).model_dump() == {"max_body_bytes": None}


def test_day_of_month_and_day_of_week_fire_on_either_unless_one_is_starred() -> None:
    after = datetime(2012, 7, 9, tzinfo=UTC)  # a Monday
    either = next_fire_times(cron("0 0 1,15 * sun"), after, 3)
    assert [t.day for t in either] == [15, 22, 29]  # the 15th is a Sunday; then Sundays
    both = next_fire_times(cron("0 0 */10 * sun"), after, 1)  # days 1,11,21,31 that are Sundays
    assert both == [datetime(2012, 10, 21, tzinfo=UTC)]


def test_spring_forward_skips_the_wall_time_that_does_not_exist() -> None:
    # Europe/Berlin, 29 March 2026: 02:00 CET becomes 03:00 CEST
    daily = cron("30 2 * * *", "Europe/Berlin")
    got = next_fire_times(daily, datetime(2026, 3, 28, tzinfo=UTC), 3)
    assert local(got, "Europe/Berlin") == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-30T02:30:00+02:00",  # not on the 29th, not at 03:30 either
        "2026-03-31T02:30:00+02:00",
    ]
    hourly = cron("0 * * * *", "America/New_York")
    got = next_fire_times(hourly, datetime(2012, 3, 11, 5, tzinfo=UTC), 3)
    assert local(got, "America/New_York") == [
        "2012-03-11T01:00:00-05:00",
        "2012-03-11T03:00:00-04:00",
        "2012-03-11T04:00:00-04:00",
    ]


def test_fall_back_fires_a_repeated_wall_time_twice() -> None:
    # Europe/Berlin, 25 October 2026: 03:00 CEST becomes 02:00 CET
    daily = cron("30 2 * * *", "Europe/Berlin")
    got = next_fire_times(daily, datetime(2026, 10, 24, tzinfo=UTC), 4)
    assert local(got, "Europe/Berlin") == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00",
        "2026-10-26T02:30:00+01:00",
    ]
    hourly = cron("0 * * * *", "America/New_York")
    got = next_fire_times(hourly, datetime(2012, 11, 4, 4, tzinfo=UTC), 4)
    assert local(got, "America/New_York") == [
        "2012-11-04T01:00:00-04:00",
        "2012-11-04T01:00:00-05:00",
        "2012-11-04T02:00:00-05:00",
        "2012-11-04T03:00:00-05:00",
    ]


def test_fire_times_before_are_the_newest_within_the_window_oldest_first() -> None:
    every_minute = cron("* * * * *")
    until = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    got = fire_times_before(
        every_minute, until, after=datetime(2026, 5, 1, 11, 57, tzinfo=UTC), count=10
    )
    assert [t.minute for t in got] == [58, 59, 0]
    got = fire_times_before(every_minute, until, after=datetime(2026, 4, 1, tzinfo=UTC), count=2)
    assert [t.minute for t in got] == [59, 0]
    berlin = cron("30 2 * * *", "Europe/Berlin")
    got = fire_times_before(
        berlin,
        datetime(2026, 10, 26, tzinfo=UTC),
        after=datetime(2026, 10, 25, tzinfo=UTC),
        count=5,
    )
    assert local(got, "Europe/Berlin") == ["2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00"]
