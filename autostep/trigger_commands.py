"""The ``autostep trigger`` and ``autostep fire`` commands.

``autostep trigger create|list|show|update|enable|disable|delete|rotate-token``
manage triggers through :mod:`autostep.triggers`; ``autostep fire --trigger
ID`` is what a Kubernetes CronJob's pod runs: it fires the due tick through
:func:`autostep.firing.fire_due` and exits 0 whatever the tick did (started,
skipped, fired before, trigger disabled or deleted), logging one line.

The tick: ``--scheduled-time`` if given; else the Kubernetes Job's name in
``AUTOSTEP_JOB_NAME`` (the CronJob controller names each Job
``<cronjob>-<minutes since the Unix epoch of its scheduled time>``); else
the newest tick up to now. :mod:`autostep.cli` adds these parsers; errors
reach it as autostep exceptions (exit 2 for bad input, naming the field).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["JOB_NAME_ENV", "add_parsers", "tick_of_job"]

#: Where ``autostep fire`` finds the Kubernetes Job's name (from the downward API).
JOB_NAME_ENV = "AUTOSTEP_JOB_NAME"
_JOB_MINUTES = re.compile(r"-(\d{7,})$")
#: Flags of ``create``/``update`` that set a cron config field.
_CRON_FLAGS = {
    "schedule": "schedule",
    "time_zone": "time_zone",
    "concurrency": "concurrency",
    "catch_up": "catch_up",
    "catch_up_limit": "catch_up_limit",
    "starting_deadline_seconds": "starting_deadline_seconds",
}


def add_parsers(sub: Any) -> None:
    """Add ``trigger`` and ``fire`` to the CLI's subcommands."""
    trigger = sub.add_parser("trigger", help="triggers: cron, webhook, manual")
    actions = trigger.add_subparsers(metavar="ACTION")

    create = actions.add_parser("create", help="create a trigger of a workflow")
    create.add_argument("--project", required=True)
    create.add_argument("--workflow", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--kind", required=True, help="cron, webhook or manual")
    _config_flags(create)
    create.add_argument("--disabled", action="store_true", help="create it disabled")
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", help="list triggers")
    listing.add_argument("--project")
    listing.add_argument("--workflow", help="a workflow id, or a name with --project")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    listing.set_defaults(handler=_list)

    show = actions.add_parser("show", help="a trigger, its next fire times and last ticks")
    show.add_argument("trigger_id")
    show.add_argument("--json", action="store_true", help="print it as JSON")
    show.set_defaults(handler=_show)

    change = actions.add_parser("update", help="change a trigger (cron flags merge)")
    change.add_argument("trigger_id")
    change.add_argument("--name")
    _config_flags(change)
    change.add_argument(
        "--no-input-template", action="store_true", help="drop the template: natural payload"
    )
    change.set_defaults(handler=_update)

    for action, text in (("enable", "enable a trigger"), ("disable", "disable a trigger")):
        toggle = actions.add_parser(action, help=text)
        toggle.add_argument("trigger_id")
        toggle.set_defaults(handler=_toggle, enabled=action == "enable")

    delete = actions.add_parser("delete", help="delete a trigger (its runs stay)")
    delete.add_argument("trigger_id")
    delete.set_defaults(handler=_delete)

    rotate = actions.add_parser("rotate-token", help="a new token for a webhook trigger")
    rotate.add_argument("trigger_id")
    rotate.set_defaults(handler=_rotate)

    fire = sub.add_parser(
        "fire", help="fire a cron trigger's due tick (what its Kubernetes CronJob runs)"
    )
    fire.add_argument("--trigger", required=True, metavar="ID")
    fire.add_argument(
        "--scheduled-time",
        metavar="RFC3339",
        help=f"the tick (default: from {JOB_NAME_ENV}, else the newest tick up to now)",
    )
    fire.set_defaults(handler=_fire)


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="JSON", help="the whole config: JSON, or @FILE")
    parser.add_argument("--schedule", metavar="CRON", help="cron: 5 fields or e.g. @daily")
    parser.add_argument("--time-zone", metavar="ZONE", help="cron: an IANA zone (UTC)")
    parser.add_argument("--concurrency", metavar="POLICY", help="cron: allow, forbid, replace")
    parser.add_argument("--catch-up", metavar="POLICY", help="cron: skip, latest, all")
    parser.add_argument("--catch-up-limit", type=int, metavar="N", help="cron: with all (10)")
    parser.add_argument(
        "--starting-deadline-seconds", type=int, metavar="S", help="cron: skip later starts"
    )
    parser.add_argument("--input-template", metavar="CEL", help="the run's input, from CEL")


def _config(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any] | None:
    """The config from ``--config`` and the cron flags over ``base``; None if none given."""
    config = dict(base)
    given = False
    if args.config is not None:
        config, given = _read_config(args.config), True
    for flag, key in _CRON_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            config[key], given = value, True
    return config if given else None


def _read_config(value: str) -> dict[str, Any]:
    from autostep.exceptions import InvalidInput

    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read {value[1:]}: {exc}", field="--config") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"not JSON: {exc.msg}", field="--config") from None
    if not isinstance(config, dict):
        raise InvalidInput("must be a JSON object", field="--config")
    return config


def _session_factory() -> Any:
    from autostep.db import make_engine, make_session_factory

    return make_session_factory(make_engine())


def _create(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.settings import get_settings
    from autostep.triggers import create_trigger, hook_path

    with unit_of_work(_session_factory()) as session:
        created = create_trigger(
            session,
            args.project,
            args.workflow,
            args.name,
            args.kind,
            _config(args, {}) or {},
            input_template=args.input_template,
            enabled=not args.disabled,
        )
        trigger_id = created.trigger.id
    print(trigger_id)
    if created.token is not None:
        url = get_settings().gateway_url.rstrip("/") + hook_path(trigger_id)
        print(f"token: {created.token}")
        print("(shown only now: keep it; `autostep trigger rotate-token` makes a new one)")
        print(
            f"curl -X POST {url} -H 'X-Autostep-Token: {created.token}'"
            " -H 'Content-Type: application/json' -d '{}'"
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.triggers import list_triggers, trigger_dict

    with unit_of_work(_session_factory()) as session:
        found = [
            trigger_dict(t)
            for t in list_triggers(session, project=args.project, workflow=args.workflow)
        ]
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    rows = [["ID", "NAME", "KIND", "ENABLED", "SCHEDULE"]]
    for t in found:
        schedule = t["config"].get("schedule", "")
        if schedule and t["config"].get("time_zone", "UTC") != "UTC":
            schedule += f" ({t['config']['time_zone']})"
        rows.append([t["id"], t["name"], t["kind"], "yes" if t["enabled"] else "no", schedule])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def _show(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.triggers import trigger_view

    with unit_of_work(_session_factory()) as session:
        view = trigger_view(session, args.trigger_id)
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    state = "enabled" if view["enabled"] else "disabled"
    print(f"{view['name']} ({view['kind']}, {state}, version {view['version']}) {view['id']}")
    for key, value in view["config"].items():
        print(f"  {key}: {value}")
    if view["input_template"]:
        print(f"  input_template: {view['input_template']}")
    if "path" in view:
        print(f"  path: POST {view['path']}")
    for when in view["next_fire_times"]:
        print(f"  next: {when}")
    for tick in view["ticks"]:
        what = tick["job_id"] or tick["reason"] or ""
        print(f"  tick {tick['scheduled_at']}: {tick['outcome']} {what}")
    return 0


def _update(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.triggers import UNCHANGED, get_trigger, update_trigger

    with unit_of_work(_session_factory()) as session:
        current = get_trigger(session, args.trigger_id)
        template: str | None = UNCHANGED
        if args.no_input_template:
            template = None
        elif args.input_template is not None:
            template = args.input_template
        trigger = update_trigger(
            session,
            current.id,
            name=args.name,
            config=_config(args, current.config),
            input_template=template,
        )
        print(f"trigger {trigger.name} is at version {trigger.version}")
    return 0


def _toggle(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.triggers import update_trigger

    with unit_of_work(_session_factory()) as session:
        trigger = update_trigger(session, args.trigger_id, enabled=args.enabled)
        print(f"trigger {trigger.name} is {'enabled' if trigger.enabled else 'disabled'}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.triggers import delete_trigger

    with unit_of_work(_session_factory()) as session:
        delete_trigger(session, args.trigger_id)
    print(f"deleted trigger {args.trigger_id}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.triggers import rotate_token

    with unit_of_work(_session_factory()) as session:
        token = rotate_token(session, args.trigger_id)
    print(f"token: {token}")
    print("(shown only now; the old token no longer works)")
    return 0


def tick_of_job(job_name: str) -> datetime | None:
    """The scheduled time a CronJob's Job name carries (``name-<minutes>``), or None."""
    found = _JOB_MINUTES.search(job_name)
    if found is None:
        return None
    return datetime.fromtimestamp(int(found.group(1)) * 60, UTC)


def _until(args: argparse.Namespace, now: datetime) -> datetime:
    from autostep.exceptions import InvalidInput

    if args.scheduled_time is not None:
        try:
            given = datetime.fromisoformat(args.scheduled_time)
        except ValueError:
            given = None
        if given is None or given.tzinfo is None:
            raise InvalidInput(
                "must be an RFC 3339 time with an offset, such as 2026-01-31T02:30:00Z",
                field="--scheduled-time",
            )
        return given.astimezone(UTC)
    job_name = os.environ.get(JOB_NAME_ENV, "")
    from_job = tick_of_job(job_name) if job_name else None
    if job_name and from_job is None:
        print(f"{JOB_NAME_ENV}={job_name!r} names no tick; firing the newest one", file=sys.stderr)
    return from_job or now


def _fire(args: argparse.Namespace) -> int:
    from autostep.db import unit_of_work
    from autostep.firing import fire_due

    now = datetime.now(UTC)
    until = _until(args, now)
    with unit_of_work(_session_factory()) as session:
        results = fire_due(session, args.trigger, until=until, now=now)
    for result in results:
        print(result.describe())
    return 0
