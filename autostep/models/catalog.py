"""Tables of the workflow catalog: projects, workflows and their versions.

A :class:`WorkflowVersion` and its :class:`Step` and :class:`Transition` rows are
immutable once written (a database trigger refuses updates), so a job can pin
the version it started on and the engine can cache compiled versions forever.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from autostep.models.base import Base, created_at_column, new_id

__all__ = ["Project", "Step", "Transition", "Workflow", "WorkflowDraft", "WorkflowVersion"]


class Project(Base):
    """A group of workflows owned by one team."""

    __tablename__ = "project"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = created_at_column()

    workflows: Mapped[list[Workflow]] = relationship(back_populates="project")


class Workflow(Base):
    """A named workflow; what it does lives in its versions."""

    __tablename__ = "workflow"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = created_at_column()
    #: When the workflow was archived (no new versions or runs), NULL while active.
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    project: Mapped[Project] = relationship(back_populates="workflows")
    versions: Mapped[list[WorkflowVersion]] = relationship(
        back_populates="workflow", order_by="WorkflowVersion.number"
    )


class WorkflowVersion(Base):
    """One published, immutable revision of a workflow."""

    __tablename__ = "workflow_version"
    __table_args__ = (UniqueConstraint("workflow_id", "number"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    workflow_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workflow.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    #: The definition exactly as it was submitted (steps and transitions are
    #: also stored as rows below).
    definition: Mapped[dict[str, Any]]
    start_step: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = created_at_column()

    workflow: Mapped[Workflow] = relationship(back_populates="versions")
    steps: Mapped[list[Step]] = relationship(order_by="Step.position")
    transitions: Mapped[list[Transition]] = relationship(order_by="Transition.position")


class Step(Base):
    """A step of a workflow version: which function runs, with what policy."""

    __tablename__ = "step"
    __table_args__ = (UniqueConstraint("version_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workflow_version.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    function: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]]
    #: Field name -> CEL expression building the function's input, or NULL.
    input: Mapped[dict[str, Any] | None]
    #: CEL expression giving the list a fan-out step runs over, or NULL.
    for_each: Mapped[str | None] = mapped_column(Text)
    retries: Mapped[int | None] = mapped_column(Integer)
    backoff: Mapped[float | None] = mapped_column(Float)
    timeout: Mapped[float | None] = mapped_column(Float)
    is_start: Mapped[bool] = mapped_column(Boolean, default=False)


class Transition(Base):
    """An edge from one step to the next, taken when its condition holds."""

    __tablename__ = "transition"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workflow_version.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(200))
    #: CEL over ``output`` (the source step's output) and ``input`` (the job's).
    condition: Mapped[str | None] = mapped_column(Text)


class WorkflowDraft(Base):
    """The definition a form edits piece by piece before it is published as a version.

    One per workflow; ``revision`` grows by one on every write and is the
    draft's ETag, so two editors never overwrite each other silently.
    """

    __tablename__ = "workflow_draft"

    workflow_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("workflow.id", ondelete="CASCADE"), primary_key=True
    )
    #: The definition being edited; it may be incomplete (a transition to a step not there yet).
    definition: Mapped[dict[str, Any]]
    revision: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = created_at_column()
