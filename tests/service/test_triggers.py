"""Triggers against the real database: CRUD, refusals that write nothing, tokens, events."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from autostep import triggers
from autostep.catalog import archive_workflow, get_workflow
from autostep.db import unit_of_work
from autostep.exceptions import ConflictError, InvalidInput, NotFoundError
from autostep.models import Trigger
from tests.helpers import outbox_events, publish

DEFINITION = {"name": "w", "steps": [{"name": "a", "function": "t_noop"}]}


@pytest.fixture
def workflow(session_factory: Any, project: str) -> str:
    publish(session_factory, project, DEFINITION)
    return "w"


def changes(session_factory: Any, trigger_id: uuid.UUID) -> list[dict[str, Any]]:
    """The trigger.changed payloads of one trigger, oldest first."""
    with unit_of_work(session_factory) as session:
        return outbox_events(session, "trigger.changed", trigger_id)


def counts(session_factory: Any) -> tuple[int, int]:
    """(triggers, trigger.changed outbox rows)."""
    with unit_of_work(session_factory) as session:
        return (
            session.scalar(select(func.count()).select_from(Trigger)) or 0,
            len(outbox_events(session, "trigger.changed")),
        )


def test_crud_round_trip_announces_every_write_with_a_higher_version(
    session_factory: Any, project: str, workflow: str
) -> None:
    with unit_of_work(session_factory) as session:
        created = triggers.create_trigger(
            session,
            project,
            workflow,
            "nightly",
            "cron",
            {"schedule": "30 2 * * *", "time_zone": "Europe/Berlin"},
            input_template='{"at": scheduled_time}',
        )
        trigger_id = created.trigger.id
    assert created.token is None
    with unit_of_work(session_factory) as session:
        view = triggers.trigger_view(session, trigger_id)
        assert view["name"] == "nightly" and view["kind"] == "cron" and view["version"] == 1
        assert view["config"]["concurrency"] == "allow" and view["config"]["catch_up"] == "latest"
        assert len(view["next_fire_times"]) == 5 and view["ticks"] == []
        listed = triggers.list_triggers(session, project=project, workflow=workflow)
        assert [t.id for t in listed] == [trigger_id]
        assert [t.id for t in triggers.list_triggers(session, project=project)] == [trigger_id]
    with unit_of_work(session_factory) as session:
        triggers.update_trigger(session, trigger_id, name="nightly-2", enabled=False)
    with unit_of_work(session_factory) as session:
        triggers.update_trigger(session, trigger_id, config={"schedule": "@hourly"})
    with unit_of_work(session_factory) as session:
        triggers.update_trigger(session, trigger_id, input_template=None)
    with unit_of_work(session_factory) as session:
        view = triggers.trigger_view(session, trigger_id)
        assert (view["name"], view["enabled"], view["input_template"]) == ("nightly-2", False, None)
        assert view["config"]["schedule"] == "@hourly" and view["next_fire_times"] == []
        (row,) = [r for r in triggers.cron_targets(session) if r.id == trigger_id]
        assert (row.schedule, row.enabled, row.version) == ("@hourly", False, 4)
    with unit_of_work(session_factory) as session:
        triggers.delete_trigger(session, trigger_id)
    with unit_of_work(session_factory) as session:
        with pytest.raises(NotFoundError):
            triggers.get_trigger(session, trigger_id)
        assert trigger_id not in {r.id for r in triggers.cron_targets(session)}
    events = changes(session_factory, trigger_id)
    assert [e["version"] for e in events] == [1, 2, 3, 4, 5]
    assert [e["deleted"] for e in events] == [False] * 4 + [True]
    assert [e["enabled"] for e in events] == [True, False, False, False, False]
    assert set(events[0]) == {
        "id", "project_id", "workflow_id", "kind", "enabled", "version", "deleted"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "error", "field"),
    [
        ({"config": {"schedule": "0 0 L * *"}}, InvalidInput, "config.schedule"),
        ({"config": {"schedule": "* * * * * *"}}, InvalidInput, "config.schedule"),
        ({"config": {"schedule": "@daily", "time_zone": "Mars/Olympus"}}, InvalidInput,
         "config.time_zone"),
        ({"config": {"schedule": "@daily", "every": 3}}, InvalidInput, "config.every"),
        ({"input_template": '{"at": scheduled_time'}, InvalidInput, "input_template"),
        ({"input_template": '{"x": body}'}, InvalidInput, "input_template"),
        ({"name": "no spaces"}, InvalidInput, "name"),
        ({"kind": "email"}, InvalidInput, "kind"),
        ({"workflow": "nope"}, NotFoundError, None),
    ],
)  # fmt: skip
def test_bad_input_is_refused_naming_the_field_and_writes_nothing(
    session_factory: Any,
    project: str,
    workflow: str,
    arguments: dict[str, Any],
    error: type[Exception],
    field: str | None,
) -> None:
    call: dict[str, Any] = {
        "project": project,
        "workflow": workflow,
        "name": "t",
        "kind": "cron",
        "config": {"schedule": "@daily"},
        **arguments,
    }
    before = counts(session_factory)
    with pytest.raises(error) as refused, unit_of_work(session_factory) as session:
        triggers.create_trigger(session, **call)
    if field is not None:
        assert isinstance(refused.value, InvalidInput) and refused.value.field == field
    assert counts(session_factory) == before


def test_bad_updates_are_refused_and_change_nothing(
    session_factory: Any, project: str, workflow: str
) -> None:
    with unit_of_work(session_factory) as session:
        trigger_id = triggers.create_trigger(
            session, project, workflow, "t", "cron", {"schedule": "@daily"}
        ).trigger.id
        triggers.create_trigger(session, project, workflow, "other", "manual")
    before = counts(session_factory)
    for change, error in [
        ({"config": {"schedule": "61 * * * *"}}, InvalidInput),
        ({"input_template": "input.x"}, InvalidInput),
        ({"name": "other"}, ConflictError),
    ]:
        with pytest.raises(error), unit_of_work(session_factory) as session:
            triggers.update_trigger(session, trigger_id, **change)
    assert counts(session_factory) == before
    with unit_of_work(session_factory) as session:
        trigger = triggers.get_trigger(session, trigger_id)
        assert (trigger.name, trigger.config["schedule"], trigger.version) == ("t", "@daily", 1)


def test_names_are_unique_per_workflow_and_archived_workflows_get_none(
    session_factory: Any, project: str, workflow: str
) -> None:
    with unit_of_work(session_factory) as session:
        triggers.create_trigger(session, project, workflow, "t", "manual")
    before = counts(session_factory)
    with pytest.raises(ConflictError), unit_of_work(session_factory) as session:
        triggers.create_trigger(session, project, workflow, "t", "webhook")
    with unit_of_work(session_factory) as session:
        archive_workflow(session, get_workflow(session, project, workflow).id)
    with pytest.raises(ConflictError, match="archived"), unit_of_work(session_factory) as session:
        triggers.create_trigger(session, project, workflow, "t2", "manual")
    assert counts(session_factory) == before


def test_a_webhook_token_is_shown_once_stored_hashed_and_rotated(
    session_factory: Any, project: str, workflow: str
) -> None:
    with unit_of_work(session_factory) as session:
        created = triggers.create_trigger(session, project, workflow, "hook", "webhook")
    token = created.token
    assert token and len(token) >= 40
    with unit_of_work(session_factory) as session:
        trigger = triggers.get_trigger(session, created.trigger.id)
        assert trigger.token_hash != token
        assert triggers.check_token(trigger, token)
        assert not triggers.check_token(trigger, token[:-1] + "x")
        assert not triggers.check_token(trigger, None)
        view = triggers.trigger_view(session, trigger.id)
        assert view["path"] == f"/hooks/{trigger.id}"
        assert token not in str(view) and str(trigger.token_hash) not in str(view)
    with unit_of_work(session_factory) as session:
        rotated = triggers.rotate_token(session, created.trigger.id)
    with unit_of_work(session_factory) as session:
        trigger = triggers.get_trigger(session, created.trigger.id)
        assert triggers.check_token(trigger, rotated) and not triggers.check_token(trigger, token)
        assert trigger.version == 2
    with unit_of_work(session_factory) as session:
        manual = triggers.create_trigger(session, project, workflow, "button", "manual")
    with pytest.raises(ConflictError), unit_of_work(session_factory) as session:
        triggers.rotate_token(session, manual.trigger.id)
