"""``/projects``: list, create, get, rename, delete; and a project's workflows.

A project is deleted only once it has no workflows (archived ones count,
since finished jobs point at their versions): 409 otherwise.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Response, status

from autostep import catalog, queries
from autostep.db import unit_of_work
from autostep.definitions import WorkflowDefinition
from autostep.gateway.http.deps import Database
from autostep.gateway.http.problems import problem_responses
from autostep.gateway.http.routes.workflows import published
from autostep.gateway.http.schemas import (
    ProjectIn,
    ProjectOut,
    ProjectPatch,
    Published,
    WorkflowOut,
)

__all__ = ["router"]

router = APIRouter(prefix="/projects", tags=["projects"])


@router.get("", responses=problem_responses(422))
def list_projects(db: Database) -> list[ProjectOut]:
    """Every project, by name."""
    with unit_of_work(db) as session:
        return [ProjectOut.model_validate(p) for p in queries.list_projects(session)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(400, 409, 413, 415, 422),
)
def create_project(body: ProjectIn, db: Database) -> ProjectOut:
    """A new project; 409 if the name is taken."""
    with unit_of_work(db) as session:
        project = catalog.create_project(session, body.name, body.description)
        return ProjectOut.model_validate(queries.project_view(session, project.id))


@router.get("/{project_id}", responses=problem_responses(404, 422))
def get_project(project_id: uuid.UUID, db: Database) -> ProjectOut:
    with unit_of_work(db) as session:
        return ProjectOut.model_validate(queries.project_view(session, project_id))


@router.patch("/{project_id}", responses=problem_responses(400, 404, 409, 413, 415, 422))
def update_project(project_id: uuid.UUID, body: ProjectPatch, db: Database) -> ProjectOut:
    """Rename the project or change its description; 409 if the new name is taken."""
    with unit_of_work(db) as session:
        catalog.update_project(session, project_id, name=body.name, description=body.description)
        return ProjectOut.model_validate(queries.project_view(session, project_id))


@router.delete(
    "/{project_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404, 409, 422),
)
def delete_project(project_id: uuid.UUID, db: Database) -> None:
    """Delete the project; 409 while it has workflows (archived ones included)."""
    with unit_of_work(db) as session:
        catalog.delete_project(session, project_id)


@router.get("/{project_id}/workflows", tags=["workflows"], responses=problem_responses(404, 422))
def list_workflows(
    project_id: uuid.UUID,
    db: Database,
    archived: bool = Query(False, description="List archived workflows too."),
) -> list[WorkflowOut]:
    """The project's workflows, by name."""
    with unit_of_work(db) as session:
        return [
            WorkflowOut.model_validate(w)
            for w in queries.list_workflows(session, project_id, archived=archived)
        ]


@router.post(
    "/{project_id}/workflows",
    tags=["workflows"],
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(400, 404, 409, 413, 415, 422),
)
def create_workflow(
    project_id: uuid.UUID, definition: WorkflowDefinition, db: Database
) -> Published:
    """Create a workflow: publish its version 1 from a definition; 409 if it exists.

    ``warnings`` names the steps whose function no live runner serves (yet).
    """
    with unit_of_work(db) as session:
        version = catalog.publish_workflow(
            session, project_id, definition.model_dump(mode="json", exclude_unset=True), new=True
        )
        return published(session, version)
