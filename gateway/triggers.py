"""The ``triggers`` nameko RPC service: manage triggers, start manual ones.

What ``nameko shell`` uses (served by ``autostep gateway rpc`` beside
``workflows``) to create, read, change and delete triggers. Thin: each
entrypoint opens a unit of work and delegates to :mod:`autostep.triggers`
or :mod:`autostep.firing`; arguments are checked and unexpected errors
hidden by :func:`autostep.gateway.workflows.expected`. A webhook trigger's
token is in the answer of ``create_trigger`` and ``rotate_token`` only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from autostep import firing, triggers
from autostep.db import unit_of_work
from autostep.dependencies import Database
from autostep.events import job_event
from autostep.gateway.workflows import expected
from autostep.validation import JobInput, Name, Reference

__all__ = ["TriggersService"]


class TriggersService:
    """Triggers of workflows: cron schedules, webhooks, manual starts."""

    name = "triggers"
    db: sessionmaker[Session] = Database()

    @expected
    def create_trigger(
        self,
        project: Reference,
        workflow: Reference,
        name: Name,
        kind: str,
        config: dict[str, Any] | None = None,
        input_template: str | None = None,
        enabled: bool = True,
    ) -> dict[str, Any]:
        """A new trigger; a webhook's ``token`` is in this answer only."""
        with unit_of_work(self.db) as session:
            created = triggers.create_trigger(
                session,
                project,
                workflow,
                name,
                kind,
                config,
                input_template=input_template,
                enabled=enabled,
            )
            return {**triggers.trigger_dict(created.trigger), "token": created.token}

    @expected
    def get_trigger(self, trigger_id: Reference) -> dict[str, Any]:
        """The trigger, its next fire times (cron) and its last ticks."""
        with unit_of_work(self.db) as session:
            return triggers.trigger_view(session, trigger_id)

    @expected
    def list_triggers(
        self, project: Reference | None = None, workflow: Reference | None = None
    ) -> list[dict[str, Any]]:
        with unit_of_work(self.db) as session:
            found = triggers.list_triggers(session, project=project, workflow=workflow)
            return [triggers.trigger_dict(trigger) for trigger in found]

    @expected
    def update_trigger(
        self,
        trigger_id: Reference,
        name: Name | None = None,
        config: dict[str, Any] | None = None,
        input_template: str | None = None,
        clear_input_template: bool = False,
        enabled: bool | None = None,
    ) -> dict[str, Any]:
        """Change what is given; ``config`` replaces the whole config."""
        template = None if clear_input_template else input_template or triggers.UNCHANGED
        with unit_of_work(self.db) as session:
            trigger = triggers.update_trigger(
                session, trigger_id, name=name, config=config, input_template=template,
                enabled=enabled,
            )  # fmt: skip
            return triggers.trigger_dict(trigger)

    @expected
    def delete_trigger(self, trigger_id: Reference) -> None:
        with unit_of_work(self.db) as session:
            triggers.delete_trigger(session, trigger_id)

    @expected
    def rotate_token(self, trigger_id: Reference) -> dict[str, Any]:
        """A new token for a webhook trigger; the old one stops working."""
        with unit_of_work(self.db) as session:
            return {"token": triggers.rotate_token(session, trigger_id)}

    @expected
    def start(
        self,
        trigger_id: Reference,
        input: JobInput | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Start a run from a manual trigger: its preset updated with ``input``."""
        with unit_of_work(self.db) as session:
            started = firing.start_manual(
                session, trigger_id, input, idempotency_key=idempotency_key
            )
            return job_event(started.job)
