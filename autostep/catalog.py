"""The workflow catalog: projects, workflows and their immutable versions.

Publishing a definition validates it completely (:func:`parse_definition`)
and stores a new :class:`WorkflowVersion`: the definition as submitted, which
the engine runs, and its steps and transitions as rows, for queries;
nothing is written if anything is wrong. Runs pin a version, and
:func:`load_version` caches versions per process: they never change.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from autostep.db import driver
from autostep.definitions import (
    DEFAULT_MAX_STEPS,
    StepDefinition,
    TransitionDefinition,
    WorkflowDefinition,
    parse_definition,
)
from autostep.exceptions import ConflictError, InvalidInput, NotFoundError
from autostep.models import Job, JobStatus, Project, Step, Transition, Workflow, WorkflowVersion
from autostep.validation import Description, Name, check, check_payload

__all__ = [
    "CompiledVersion",
    "archive_workflow",
    "create_project",
    "delete_project",
    "find_workflow",
    "get_project",
    "get_workflow",
    "latest_version",
    "load_version",
    "lock_active_workflow",
    "lock_start_version",
    "publish_version",
    "publish_workflow",
    "update_project",
]


@dataclass(frozen=True)
class CompiledVersion:
    """A workflow version as the engine uses it."""

    id: uuid.UUID
    workflow_id: uuid.UUID
    number: int
    start_step: str
    steps: dict[str, StepDefinition]
    #: Steps a job of this version may enter before it fails (a runaway loop).
    max_steps: int = DEFAULT_MAX_STEPS

    def step(self, name: str) -> StepDefinition:
        return self.steps[name]

    def field(self, name: str) -> str:
        """Where step ``name`` is in the definition, e.g. ``steps[1]``, for error messages."""
        return f"steps[{list(self.steps).index(name)}]"

    def transitions(self, source: str) -> list[TransitionDefinition]:
        return self.steps[source].next


_VERSIONS: dict[uuid.UUID, CompiledVersion] = {}


def create_project(session: Session, name: str, description: str = "") -> Project:
    """A new project; :class:`ConflictError` if the name is taken.

    A bad name or description is refused (:class:`InvalidInput`) before any SQL.
    """
    name = check(Name, name, field="name")
    description = check(Description, description, field="description")
    project = Project(name=name, description=description)
    try:
        with session.begin_nested():
            session.add(project)
    except IntegrityError as exc:
        raise ConflictError(f"project {name!r} exists already") from exc
    return project


def update_project(
    session: Session,
    project: str | uuid.UUID,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Project:
    """Rename ``project`` or change its description; :class:`ConflictError` if the name is taken."""
    if name is not None:
        name = check(Name, name, field="name")
    if description is not None:
        description = check(Description, description, field="description")
    found = get_project(session, project)
    try:
        with session.begin_nested():
            if name is not None:
                found.name = name
            if description is not None:
                found.description = description
    except IntegrityError as exc:
        raise ConflictError(f"project {name!r} exists already") from exc
    return found


def delete_project(session: Session, project: str | uuid.UUID) -> None:
    """Delete ``project``; :class:`ConflictError` while it has workflows, archived ones included.

    Archived workflows count because finished jobs still point at their versions.
    """
    found = get_project(session, project)
    session.refresh(found, with_for_update=True)
    has_workflows = session.scalar(select(exists().where(Workflow.project_id == found.id)))
    if has_workflows:
        raise ConflictError(
            f"project {found.name!r} has workflows; it can be deleted once it has none"
        )
    session.delete(found)
    session.flush()


def get_project(session: Session, name_or_id: str | uuid.UUID) -> Project:
    project = session.scalar(select(Project).where(_by_name_or_id(Project, name_or_id)))
    if project is None:
        raise NotFoundError(f"no project {str(name_or_id)!r}")
    return project


def get_workflow(session: Session, project: str | uuid.UUID, name_or_id: str) -> Workflow:
    query = select(Workflow).join(Project).where(_by_name_or_id(Project, project))
    workflow = session.scalar(query.where(_by_name_or_id(Workflow, name_or_id)))
    if workflow is None:
        raise NotFoundError(f"no workflow {name_or_id!r} in project {str(project)!r}")
    return workflow


def find_workflow(session: Session, workflow_id: uuid.UUID | str) -> Workflow:
    """The workflow with id ``workflow_id``, whichever its project."""
    try:
        key = uuid.UUID(str(workflow_id))
    except ValueError as exc:
        raise NotFoundError(f"no workflow {workflow_id!r}: not a workflow id") from exc
    workflow = session.get(Workflow, key)
    if workflow is None:
        raise NotFoundError(f"no workflow {workflow_id}")
    return workflow


def lock_active_workflow(session: Session, workflow_id: uuid.UUID) -> Workflow:
    """Share-lock the workflow a run is about to start on; :class:`ConflictError` if archived.

    The lock keeps :func:`archive_workflow` waiting until the new job is
    committed, so that it sees the job in flight.
    """
    workflow = session.get(
        Workflow, workflow_id, with_for_update={"read": True}, populate_existing=True
    )
    if workflow is None:
        raise NotFoundError(f"no workflow {workflow_id}")
    if workflow.archived_at is not None:
        raise ConflictError(f"workflow {workflow.name!r} is archived: it starts no new runs")
    return workflow


#: The workflow a run starts on, share-locked (as :func:`lock_active_workflow`
#: locks it), and its version: the newest, or number ``%(number)s``.
_START_VERSION = """
SELECT w.id, w.name, w.archived_at, v.id
FROM workflow AS w
JOIN project AS p ON p.id = w.project_id
LEFT JOIN LATERAL (
    SELECT id FROM workflow_version
    WHERE workflow_id = w.id AND (%(number)s::int IS NULL OR number = %(number)s::int)
    ORDER BY number DESC LIMIT 1) AS v ON true
WHERE (p.id = %(project_id)s::uuid OR p.name = %(project_name)s::text)
  AND (w.id = %(workflow_id)s::uuid OR w.name = %(workflow_name)s::text)
FOR SHARE OF w
"""


def lock_start_version(
    session: Session, project: str | uuid.UUID, workflow: str, number: int | None = None
) -> CompiledVersion:
    """The version a new run of ``workflow`` starts on: its newest, or ``number``.

    One statement finds the workflow in ``project`` (each by name or id) and
    share-locks it, as :func:`lock_active_workflow` does, so that archiving
    waits for the run; the version comes from the process cache.
    :class:`NotFoundError` for an unknown project, workflow or version,
    :class:`ConflictError` for an archived workflow.
    """
    if number is not None and not 0 < number < 2**31:
        raise NotFoundError(f"workflow {workflow!r} has no version {number}")  # not an int4
    project_id, project_name = _id_or_name(project)
    workflow_id, workflow_name = _id_or_name(workflow)
    params = {
        "project_id": project_id,
        "project_name": project_name,
        "workflow_id": workflow_id,
        "workflow_name": workflow_name,
        "number": number,
    }
    with driver(session).cursor() as cursor:
        cursor.execute(_START_VERSION, params, prepare=True)
        found = cursor.fetchone()
    if found is None:
        raise NotFoundError(f"no workflow {workflow!r} in project {str(project)!r}")
    _, name, archived_at, version_id = found
    if archived_at is not None:
        raise ConflictError(f"workflow {name!r} is archived: it starts no new runs")
    if version_id is None:
        if number is not None:
            raise NotFoundError(f"workflow {workflow!r} has no version {number}")
        raise NotFoundError(f"workflow {workflow!r} has no version")
    return load_version(session, version_id)


def _id_or_name(key: str | uuid.UUID) -> tuple[uuid.UUID | None, str | None]:
    """A reference as (id, None) when it reads as an id, else (None, name)."""
    try:
        return uuid.UUID(str(key)), None
    except ValueError:
        return None, str(key)


def archive_workflow(session: Session, workflow_id: uuid.UUID | str) -> Workflow:
    """Archive a workflow (a soft delete: its versions stay for the jobs that ran them).

    :class:`ConflictError` while one of its jobs is running. An archived
    workflow takes no new versions and starts no new runs. Archiving twice
    changes nothing.
    """
    workflow = find_workflow(session, workflow_id)
    session.refresh(workflow, with_for_update=True)
    if workflow.archived_at is not None:
        return workflow
    running = session.scalar(
        select(func.count(Job.id)).where(
            Job.workflow_id == workflow.id, Job.status == JobStatus.RUNNING
        )
    )
    if running:
        raise ConflictError(
            f"workflow {workflow.name!r} has {running} run(s) in flight: "
            "cancel them or let them finish first"
        )
    workflow.archived_at = session.scalar(select(func.now()))
    session.flush()
    return workflow


def publish_version(
    session: Session, workflow_id: uuid.UUID | str, definition: dict[str, Any]
) -> WorkflowVersion:
    """Store ``definition`` as the next version of the workflow ``workflow_id``.

    The definition's ``name`` must be the workflow's (:class:`InvalidInput` naming ``name``).
    """
    workflow = find_workflow(session, workflow_id)
    return publish_workflow(session, workflow.project_id, definition, workflow_id=workflow.id)


def publish_workflow(
    session: Session,
    project: str | uuid.UUID,
    definition: dict[str, Any],
    *,
    new: bool = False,
    workflow_id: uuid.UUID | None = None,
) -> WorkflowVersion:
    """Validate ``definition`` and store it as the workflow's next version.

    Creates the workflow on its first version. Raises
    :class:`~autostep.exceptions.DefinitionError` naming the bad field, and
    :class:`~autostep.exceptions.InvalidInput` for a definition larger than
    ``max_payload_bytes`` as JSON. With ``new``, :class:`ConflictError` when
    the workflow exists already; with ``workflow_id``, the definition must
    name that workflow. An archived workflow takes no new version
    (:class:`ConflictError`).
    """
    check_payload(definition, field="definition")
    parsed = parse_definition(definition)
    owner = get_project(session, project)
    workflow = session.scalar(
        select(Workflow)
        .where(Workflow.project_id == owner.id, Workflow.name == parsed.name)
        .with_for_update()
    )
    if workflow_id is not None and (workflow is None or workflow.id != workflow_id):
        raise InvalidInput(
            f"is {parsed.name!r}, not the name of the workflow published to", field="name"
        )
    if workflow is not None and new:
        raise ConflictError(f"workflow {parsed.name!r} exists already in project {owner.name!r}")
    if workflow is not None and workflow.archived_at is not None:
        raise ConflictError(f"workflow {parsed.name!r} is archived: it takes no new version")
    if workflow is None:
        workflow = Workflow(project_id=owner.id, name=parsed.name, description=parsed.description)
        try:
            with session.begin_nested():
                session.add(workflow)
                session.flush()
        except IntegrityError as exc:
            # published at the same moment by another transaction
            raise ConflictError(f"workflow {parsed.name!r} was just published; try again") from exc
    number = session.scalar(
        select(func.coalesce(func.max(WorkflowVersion.number), 0)).where(
            WorkflowVersion.workflow_id == workflow.id
        )
    )
    version = WorkflowVersion(
        workflow_id=workflow.id,
        number=(number or 0) + 1,
        definition=parsed.model_dump(mode="json", exclude_none=True),
        start_step=parsed.start_step,
    )
    session.add(version)
    session.flush()
    for position, step in enumerate(parsed.steps):
        session.add(
            Step(
                version_id=version.id,
                position=position,
                name=step.name,
                function=step.function,
                config=step.config,
                input=step.input,
                for_each=step.for_each,
                retries=step.retries,
                backoff=step.backoff,
                timeout=step.timeout,
                is_start=step.name == parsed.start_step,
            )
        )
        for index, transition in enumerate(step.next):
            session.add(
                Transition(
                    version_id=version.id,
                    position=index,
                    source=step.name,
                    target=transition.to,
                    condition=transition.when,
                )
            )
    session.flush()
    return version


def latest_version(session: Session, workflow_id: uuid.UUID) -> WorkflowVersion:
    version = session.scalar(
        select(WorkflowVersion)
        .where(WorkflowVersion.workflow_id == workflow_id)
        .order_by(WorkflowVersion.number.desc())
        .limit(1)
    )
    if version is None:
        raise NotFoundError(f"workflow {workflow_id} has no version")
    return version


def load_version(session: Session, version_id: uuid.UUID) -> CompiledVersion:
    """The version ``version_id``, from the process cache or the database."""
    cached = _VERSIONS.get(version_id)
    if cached is not None:
        return cached
    row = session.get(WorkflowVersion, version_id)
    if row is None:
        raise NotFoundError(f"no workflow version {version_id}")
    definition = WorkflowDefinition.model_validate(row.definition)
    steps = {step.name: step for step in definition.steps}
    compiled = CompiledVersion(
        row.id, row.workflow_id, row.number, row.start_step, steps, definition.max_steps
    )
    _VERSIONS[version_id] = compiled
    return compiled


def _by_name_or_id(model: type[Project] | type[Workflow], key: str | uuid.UUID) -> Any:
    key_id, name = _id_or_name(key)
    return model.id == key_id if key_id is not None else model.name == name
