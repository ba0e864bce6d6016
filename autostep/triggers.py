"""Triggers of workflows: create, read, change and delete them.

The boundaries (the CLI, the ``triggers`` RPC service, the REST gateway)
call these inside a unit of work. Everything a caller sends is checked
before anything is written: the name, the kind and its config
(:func:`autostep.trigger_kinds.parse_config`, naming ``config.<field>``),
the input template (CEL over the kind's variables); an unknown workflow is a
:class:`NotFoundError`, an archived one a :class:`ConflictError`.

Every write also puts a ``trigger.changed`` event into the outbox, in the
same transaction, with the trigger's ``version`` (one more per change):
the scheduler follows them and keeps the newest. A webhook trigger's token
is returned once, by :func:`create_trigger` and :func:`rotate_token`; only
its SHA-256 is stored (:func:`check_token` compares in constant time).

:func:`trigger_view` is the read model a user sees (next fire times, the
last ticks, a webhook's path); :func:`cron_targets` is what the scheduler
reconciles into Kubernetes CronJobs. Firing lives in :mod:`autostep.firing`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from autostep.catalog import find_workflow, get_project, get_workflow
from autostep.conditions import check_variables
from autostep.exceptions import ConflictError, InvalidInput, NotFoundError
from autostep.models import Trigger, TriggerTick, Workflow
from autostep.outbox import OutboxWriter
from autostep.trigger_kinds import KINDS, CronConfig, next_fire_times, parse_config
from autostep.validation import Name, check

__all__ = [
    "CHANGED_EVENT",
    "TICKS_SHOWN",
    "Created",
    "CronTriggerRow",
    "check_token",
    "create_trigger",
    "cron_targets",
    "delete_trigger",
    "get_trigger",
    "hook_path",
    "list_triggers",
    "rotate_token",
    "trigger_dict",
    "trigger_view",
    "update_trigger",
]

#: The event every write of a trigger announces.
CHANGED_EVENT = "trigger.changed"
#: How many of its last ticks :func:`trigger_view` shows.
TICKS_SHOWN = 10
#: How many next fire times :func:`trigger_view` shows.
NEXT_SHOWN = 5


class Created(NamedTuple):
    """A new trigger, and a webhook's token (shown once; None for other kinds)."""

    trigger: Trigger
    token: str | None


@dataclass(frozen=True)
class CronTriggerRow:
    """What the scheduler needs of one cron trigger to keep its CronJob."""

    id: uuid.UUID
    project_id: uuid.UUID
    workflow_id: uuid.UUID
    name: str
    schedule: str
    time_zone: str
    concurrency: str
    starting_deadline_seconds: int | None
    enabled: bool
    version: int


class _Unchanged:
    """Marks an argument of :func:`update_trigger` that keeps its value."""


UNCHANGED: Any = _Unchanged()


def create_trigger(
    session: Session,
    project: str | uuid.UUID,
    workflow: str,
    name: str,
    kind: str,
    config: dict[str, Any] | None = None,
    *,
    input_template: str | None = None,
    enabled: bool = True,
) -> Created:
    """A new trigger of ``workflow``; :class:`ConflictError` if the name is taken there."""
    name = check(Name, name, field="name")
    parsed = parse_config(kind, {} if config is None else config)
    _check_template(kind, input_template)
    found = get_workflow(session, project, workflow)
    _refuse_archived(found)
    token = secrets.token_urlsafe(32) if kind == "webhook" else None
    trigger = Trigger(
        id=uuid.uuid4(),
        project_id=found.project_id,
        workflow_id=found.id,
        name=name,
        kind=kind,
        enabled=enabled,
        config=parsed.model_dump(mode="json"),
        input_template=input_template,
        token_hash=_hash(token) if token is not None else None,
        active_since=_now(session),
        version=1,
    )
    try:
        with session.begin_nested():
            session.add(trigger)
    except IntegrityError as exc:
        raise ConflictError(f"workflow {found.name!r} has a trigger {name!r} already") from exc
    _announce(session, trigger)
    return Created(trigger, token)


def get_trigger(session: Session, trigger_id: uuid.UUID | str, *, lock: bool = False) -> Trigger:
    """The trigger ``trigger_id``; ``lock``: locked for update until commit."""
    try:
        key = uuid.UUID(str(trigger_id))
    except ValueError:
        raise NotFoundError(f"no trigger {trigger_id!r}: not a trigger id") from None
    trigger = session.get(Trigger, key, with_for_update=lock, populate_existing=lock)
    if trigger is None:
        raise NotFoundError(f"no trigger {trigger_id}")
    return trigger


def list_triggers(
    session: Session,
    *,
    project: str | uuid.UUID | None = None,
    workflow: str | None = None,
    kind: str | None = None,
) -> list[Trigger]:
    """Triggers, by project and name; of ``project``, of ``workflow`` (a name needs ``project``)."""
    query = select(Trigger).order_by(Trigger.project_id, Trigger.workflow_id, Trigger.name)
    if workflow is not None:
        found = (
            get_workflow(session, project, workflow)
            if project is not None
            else find_workflow(session, workflow)
        )
        query = query.where(Trigger.workflow_id == found.id)
    elif project is not None:
        query = query.where(Trigger.project_id == get_project(session, project).id)
    if kind is not None:
        query = query.where(Trigger.kind == kind)
    return list(session.scalars(query))


def update_trigger(
    session: Session,
    trigger_id: uuid.UUID | str,
    *,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    input_template: str | None = UNCHANGED,
    enabled: bool | None = None,
) -> Trigger:
    """Change what is given; ``config`` replaces the whole config.

    ``input_template=None`` clears the template (the natural payload again).

    Enabling a trigger again, or changing its schedule or zone, starts its
    ticks afresh: ticks missed before are not caught up.
    """
    if name is not None:
        name = check(Name, name, field="name")
    trigger = get_trigger(session, trigger_id, lock=True)
    parsed = parse_config(trigger.kind, config) if config is not None else None
    if input_template is not UNCHANGED:
        _check_template(trigger.kind, input_template)
    if enabled and not trigger.enabled:
        _refuse_archived(find_workflow(session, trigger.workflow_id))
    restart = bool(enabled and not trigger.enabled)
    try:
        with session.begin_nested():
            if name is not None:
                trigger.name = name
            if parsed is not None:
                new = parsed.model_dump(mode="json")
                restart = restart or _timing(new) != _timing(trigger.config)
                trigger.config = new
            if input_template is not UNCHANGED:
                trigger.input_template = input_template
            if enabled is not None:
                trigger.enabled = enabled
    except IntegrityError as exc:
        raise ConflictError(f"the workflow has a trigger {name!r} already") from exc
    if restart:
        trigger.active_since = _now(session)
    _changed(session, trigger)
    return trigger


def delete_trigger(session: Session, trigger_id: uuid.UUID | str) -> None:
    """Delete a trigger and its ticks; its jobs stay."""
    trigger = get_trigger(session, trigger_id, lock=True)
    trigger.version += 1
    _announce(session, trigger, deleted=True)
    session.delete(trigger)
    session.flush()


def rotate_token(session: Session, trigger_id: uuid.UUID | str) -> str:
    """A new token for a webhook trigger (the old one stops working); shown only now."""
    trigger = get_trigger(session, trigger_id, lock=True)
    if trigger.kind != "webhook":
        raise ConflictError(
            f"trigger {trigger.name!r} is a {trigger.kind} trigger: it has no token"
        )
    token = secrets.token_urlsafe(32)
    trigger.token_hash = _hash(token)
    _changed(session, trigger)
    return token


def check_token(trigger: Trigger, token: str | None) -> bool:
    """Whether ``token`` is the webhook trigger's token (in constant time)."""
    if trigger.token_hash is None or not token:
        return False
    return hmac.compare_digest(_hash(token), trigger.token_hash)


def hook_path(trigger_id: uuid.UUID) -> str:
    """Where a webhook trigger is called, on the gateway."""
    return f"/hooks/{trigger_id}"


def trigger_dict(trigger: Trigger) -> dict[str, Any]:
    """A trigger as callers see it in lists: its fields, never its token or hash."""
    shown: dict[str, Any] = {
        "id": str(trigger.id),
        "project_id": str(trigger.project_id),
        "workflow_id": str(trigger.workflow_id),
        "name": trigger.name,
        "kind": trigger.kind,
        "enabled": trigger.enabled,
        "config": trigger.config,
        "input_template": trigger.input_template,
        "version": trigger.version,
        "created_at": trigger.created_at.isoformat(),
        "updated_at": trigger.updated_at.isoformat(),
    }
    if trigger.kind == "webhook":
        shown["path"] = hook_path(trigger.id)
    return shown


def trigger_view(
    session: Session, trigger_id: uuid.UUID | str, *, now: datetime | None = None
) -> dict[str, Any]:
    """A trigger with its next fire times (an enabled cron trigger) and its last ticks."""
    trigger = get_trigger(session, trigger_id)
    view = trigger_dict(trigger)
    view["next_fire_times"] = []
    if trigger.kind == "cron" and trigger.enabled:
        config = CronConfig.model_validate(trigger.config)
        after = now or _now(session)
        view["next_fire_times"] = [
            t.isoformat() for t in next_fire_times(config, after, NEXT_SHOWN)
        ]
    ticks = session.scalars(
        select(TriggerTick)
        .where(TriggerTick.trigger_id == trigger.id)
        .order_by(TriggerTick.scheduled_at.desc())
        .limit(TICKS_SHOWN)
    )
    view["ticks"] = [
        {
            "scheduled_at": tick.scheduled_at.isoformat(),
            "outcome": tick.outcome,
            "reason": tick.reason,
            "job_id": str(tick.job_id) if tick.job_id else None,
        }
        for tick in ticks
    ]
    return view


def cron_targets(session: Session) -> list[CronTriggerRow]:
    """Every cron trigger, enabled or not, as the scheduler keeps its CronJob."""
    rows = session.scalars(select(Trigger).where(Trigger.kind == "cron").order_by(Trigger.id))
    targets = []
    for trigger in rows:
        config = CronConfig.model_validate(trigger.config)
        targets.append(
            CronTriggerRow(
                id=trigger.id,
                project_id=trigger.project_id,
                workflow_id=trigger.workflow_id,
                name=trigger.name,
                schedule=config.schedule,
                time_zone=config.time_zone,
                concurrency=config.concurrency,
                starting_deadline_seconds=config.starting_deadline_seconds,
                enabled=trigger.enabled,
                version=trigger.version,
            )
        )
    return targets


def _check_template(kind: str, template: str | None) -> None:
    if template is None:
        return
    if not isinstance(template, str):
        raise InvalidInput("must be a CEL expression (a string) or null", field="input_template")
    check_variables(template, KINDS[kind].variables, field="input_template")


def _refuse_archived(workflow: Workflow) -> None:
    if workflow.archived_at is not None:
        raise ConflictError(f"workflow {workflow.name!r} is archived: it starts no new runs")


def _timing(config: dict[str, Any]) -> tuple[Any, Any]:
    return config.get("schedule"), config.get("time_zone")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now(session: Session) -> datetime:
    """The database's clock: ticks are compared with it, whichever host fires them."""
    return session.execute(select(func.now())).scalar_one()


def _changed(session: Session, trigger: Trigger) -> None:
    trigger.version += 1
    trigger.updated_at = _now(session)
    session.flush()
    _announce(session, trigger)


def _announce(session: Session, trigger: Trigger, *, deleted: bool = False) -> None:
    """Put ``trigger.changed`` into the outbox, in the caller's transaction."""
    out = OutboxWriter(session, trigger.id, aggregate="trigger")
    out.event(
        CHANGED_EVENT,
        trigger.id,
        {
            "id": str(trigger.id),
            "project_id": str(trigger.project_id),
            "workflow_id": str(trigger.workflow_id),
            "kind": trigger.kind,
            "enabled": trigger.enabled,
            "version": trigger.version,
            "deleted": deleted,
        },
    )
    out.flush()
