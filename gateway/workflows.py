"""The ``workflows`` and ``conditions`` nameko RPC services.

What ``nameko shell`` (and later the REST gateway) uses to manage projects and
workflows, start runs and read them. Thin: each entrypoint opens a unit of
work and delegates to :mod:`autostep.catalog`, :mod:`autostep.runs` or
:mod:`autostep.queries` (and :mod:`autostep.registry`, the function registry);
errors travel as autostep exceptions, which nameko
hands to the caller as ``RemoteError`` with the exception's type name.
"""

from __future__ import annotations

from typing import Any

from nameko.rpc import rpc
from sqlalchemy.orm import Session, sessionmaker

from autostep import catalog, queries, registry, runs
from autostep.conditions import try_expression
from autostep.db import unit_of_work
from autostep.dependencies import Database
from autostep.events import job_event
from autostep.exceptions import AutostepError

__all__ = ["ConditionsService", "WorkflowsService"]

expected = rpc(expected_exceptions=AutostepError)


class WorkflowsService:
    """Projects, workflow versions and runs."""

    name = "workflows"
    db: sessionmaker[Session] = Database()

    @expected
    def create_project(self, name: str, description: str = "") -> dict[str, Any]:
        with unit_of_work(self.db) as session:
            project = catalog.create_project(session, name, description)
            return {"id": str(project.id), "name": project.name}

    @expected
    def publish_workflow(self, project: str, definition: dict[str, Any]) -> dict[str, Any]:
        """Store ``definition`` as the next version of its workflow.

        ``warnings`` names the steps whose function no live runner serves (yet).
        """
        with unit_of_work(self.db) as session:
            version = catalog.publish_workflow(session, project, definition)
            return {
                "workflow_id": str(version.workflow_id),
                "version_id": str(version.id),
                "number": version.number,
                "warnings": registry.unserved(session, version.definition),
            }

    @expected
    def start_job(
        self,
        project: str,
        workflow: str,
        input: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Start a run; returns the job (it runs on after this returns)."""
        with unit_of_work(self.db) as session:
            job = runs.start_job(
                session, project, workflow, input or {}, trigger="rpc", version=version
            )
            return job_event(job)

    @expected
    def get_workflow(
        self, project: str, workflow: str, version: int | None = None
    ) -> dict[str, Any]:
        """The workflow, its versions, and one version's steps (the newest by default)."""
        with unit_of_work(self.db) as session:
            return queries.workflow_view(session, project, workflow, version)

    @expected
    def get_job(self, job_id: str) -> dict[str, Any]:
        with unit_of_work(self.db) as session:
            return queries.job_view(session, job_id)

    @expected
    def list_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        with unit_of_work(self.db) as session:
            return queries.list_jobs(session, limit=limit)

    @expected
    def list_functions(self) -> list[dict[str, Any]]:
        """The function registry: each function, its live runners, policy and JSON Schemas."""
        with unit_of_work(self.db) as session:
            return registry.list_functions(session)


class ConditionsService:
    """Conditions: try CEL expressions before saving them."""

    name = "conditions"

    @rpc
    def test(self, expression: str, sample: dict[str, Any]) -> dict[str, Any]:
        """Compile ``expression`` and evaluate it over ``sample``.

        ``sample`` holds the variables, e.g. ``{"output": {...}, "input": {...}}``;
        returns ``{"ok": True, "result": ...}`` or ``{"ok": False, "error": ...}``.
        """
        return try_expression(expression, sample)
