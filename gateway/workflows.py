"""The ``workflows`` and ``conditions`` nameko RPC services.

What ``nameko shell`` uses (served by ``autostep gateway rpc``) to manage projects and
workflows, start runs and read them. Thin: each entrypoint opens a unit of
work and delegates to :mod:`autostep.catalog`, :mod:`autostep.runs` or
:mod:`autostep.queries` (and :mod:`autostep.registry`, the function registry);
errors travel as autostep exceptions, which nameko
hands to the caller as ``RemoteError`` with the exception's type name.

Every entrypoint is declared with :func:`expected`: its arguments are checked
against their annotations (the types of :mod:`autostep.validation`) before a
transaction opens, and anything unexpected (a database error, a bug) is
logged here in full and reaches the caller as a short ``InternalError`` with
a reference to that log line, never as SQL text or a traceback.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from nameko.rpc import rpc
from sqlalchemy.orm import Session, sessionmaker

from autostep import catalog, queries, registry, runs
from autostep.conditions import try_expression
from autostep.db import unit_of_work
from autostep.dependencies import Database
from autostep.events import job_event
from autostep.exceptions import AutostepError, InternalError
from autostep.validation import (
    Description,
    JobInput,
    Limit,
    Name,
    Reference,
    VersionNumber,
    checked_arguments,
)

__all__ = ["ConditionsService", "WorkflowsService"]

F = TypeVar("F", bound=Callable[..., Any])

_log = logging.getLogger(__name__)


def expected(method: F) -> F:
    """An RPC entrypoint that checks its arguments and hides unexpected errors.

    Arguments are validated against ``method``'s annotations first
    (:class:`~autostep.exceptions.InvalidInput` naming the argument). Autostep
    errors reach the caller as they are; any other error is logged here with
    its traceback and becomes an :class:`~autostep.exceptions.InternalError`
    that names only a reference to that log line.
    """
    checked = checked_arguments(method)

    @functools.wraps(checked)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return checked(*args, **kwargs)
        except AutostepError:
            raise
        except Exception as exc:
            reference = uuid.uuid4().hex[:12]
            _log.exception("%s failed unexpectedly [%s]", method.__name__, reference)
            raise InternalError(
                f"{method.__name__} failed unexpectedly; the server logged it as [{reference}]"
            ) from exc

    call.__signature__ = checked.__signature__  # type: ignore[attr-defined]
    entrypoint: F = rpc(expected_exceptions=AutostepError)(call)
    return entrypoint


class WorkflowsService:
    """Projects, workflow versions and runs."""

    name = "workflows"
    db: sessionmaker[Session] = Database()

    @expected
    def create_project(self, name: Name, description: Description = "") -> dict[str, Any]:
        with unit_of_work(self.db) as session:
            project = catalog.create_project(session, name, description)
            return {"id": str(project.id), "name": project.name}

    @expected
    def publish_workflow(self, project: Reference, definition: dict[str, Any]) -> dict[str, Any]:
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
        project: Reference,
        workflow: Reference,
        input: JobInput | None = None,
        version: VersionNumber | None = None,
    ) -> dict[str, Any]:
        """Start a run; returns the job (it runs on after this returns)."""
        with unit_of_work(self.db) as session:
            job = runs.start_job(
                session, project, workflow, input or {}, trigger="rpc", version=version
            )
            return job_event(job)

    @expected
    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a running job; a finished one is returned as it is."""
        with unit_of_work(self.db) as session:
            return job_event(runs.cancel_job(session, job_id))

    @expected
    def rerun_job(self, job_id: str) -> dict[str, Any]:
        """A new job that goes on where a failed or cancelled job stopped."""
        with unit_of_work(self.db) as session:
            return job_event(runs.rerun_job(session, job_id, trigger="rpc"))

    @expected
    def list_projects(self) -> list[dict[str, Any]]:
        with unit_of_work(self.db) as session:
            return queries.list_projects(session)

    @expected
    def list_workflows(self, project: str) -> list[dict[str, Any]]:
        with unit_of_work(self.db) as session:
            return queries.list_workflows(session, project)

    @expected
    def get_workflow(
        self, project: Reference, workflow: Reference, version: VersionNumber | None = None
    ) -> dict[str, Any]:
        """The workflow, its versions, and one version's steps (the newest by default)."""
        with unit_of_work(self.db) as session:
            return queries.workflow_view(session, project, workflow, version)

    @expected
    def get_job(self, job_id: Reference) -> dict[str, Any]:
        with unit_of_work(self.db) as session:
            return queries.job_view(session, job_id)

    @expected
    def list_jobs(self, limit: Limit = 50) -> list[dict[str, Any]]:
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

    @expected
    def test(self, expression: str, sample: dict[str, Any]) -> dict[str, Any]:
        """Compile ``expression`` and evaluate it over ``sample``.

        ``sample`` holds the variables, e.g. ``{"output": {...}, "input": {...}}``;
        returns ``{"ok": True, "result": ...}`` or ``{"ok": False, "error": ...}``.
        """
        return try_expression(expression, sample)
