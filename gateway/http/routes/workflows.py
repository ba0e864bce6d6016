"""``/workflows/{id}``: get, archive, and the workflow's immutable versions.

Archiving is a soft delete (``DELETE``): finished jobs keep pointing at the
versions, the workflow shows ``archived_at`` and takes no new versions or
runs; 409 while one of its runs is in flight. Publishing the next version
answers with the registry's ``warnings`` about steps no runner serves.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Path, status
from sqlalchemy.orm import Session

from autostep import catalog, queries, registry
from autostep.db import unit_of_work
from autostep.definitions import WorkflowDefinition
from autostep.gateway.http.deps import Database
from autostep.gateway.http.problems import problem_responses
from autostep.gateway.http.schemas import Published, VersionDetail, VersionOut, WorkflowDetail
from autostep.models import WorkflowVersion

__all__ = ["published", "router"]

router = APIRouter(prefix="/workflows", tags=["workflows"])


def published(session: Session, version: WorkflowVersion) -> Published:
    """The answer to a publish: the workflow, the new version and the registry's warnings."""
    session.flush()
    session.expire_all()  # read the workflow's versions again, the new one included
    workflow = queries.workflow_summary(session, version.workflow_id)
    head = queries.version_view(session, version.workflow_id, version.number)
    return Published(
        workflow=WorkflowDetail.model_validate(workflow),
        version=VersionOut.model_validate(head),
        warnings=registry.unserved(session, head["definition"]),
    )


@router.get("/{workflow_id}", responses=problem_responses(404, 422))
def get_workflow(workflow_id: uuid.UUID, db: Database) -> WorkflowDetail:
    with unit_of_work(db) as session:
        return WorkflowDetail.model_validate(queries.workflow_summary(session, workflow_id))


@router.delete("/{workflow_id}", responses=problem_responses(404, 409, 422))
def archive_workflow(workflow_id: uuid.UUID, db: Database) -> WorkflowDetail:
    """Archive the workflow (a soft delete); 409 while one of its runs is in flight."""
    with unit_of_work(db) as session:
        catalog.archive_workflow(session, workflow_id)
        return WorkflowDetail.model_validate(queries.workflow_summary(session, workflow_id))


@router.get("/{workflow_id}/versions", responses=problem_responses(404, 422))
def list_versions(workflow_id: uuid.UUID, db: Database) -> list[VersionOut]:
    """The workflow's versions, oldest first."""
    with unit_of_work(db) as session:
        return [VersionOut.model_validate(v) for v in queries.list_versions(session, workflow_id)]


@router.get("/{workflow_id}/versions/{number}", responses=problem_responses(404, 422))
def get_version(
    workflow_id: uuid.UUID,
    db: Database,
    number: int = Path(ge=1, le=2**31 - 1),
) -> VersionDetail:
    """One version: its definition as stored, and its steps with their transitions."""
    with unit_of_work(db) as session:
        return VersionDetail.model_validate(queries.version_view(session, workflow_id, number))


@router.post(
    "/{workflow_id}/versions",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(400, 404, 409, 413, 415, 422),
)
def publish_version(
    workflow_id: uuid.UUID, definition: WorkflowDefinition, db: Database
) -> Published:
    """Publish the next version from a definition whose ``name`` is the workflow's.

    ``warnings`` names the steps whose function no live runner serves (yet);
    409 for an archived workflow.
    """
    with unit_of_work(db) as session:
        version = catalog.publish_version(
            session, workflow_id, definition.model_dump(mode="json", exclude_unset=True)
        )
        return published(session, version)
