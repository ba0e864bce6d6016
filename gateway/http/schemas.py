"""The HTTP gateway's bodies and answers, as pydantic models.

Answers mirror the core's read models (:mod:`autostep.queries`,
:mod:`autostep.registry`) and the ``*.updated`` events
(:mod:`autostep.events`), so a client sees a job the same way over REST,
over the socket and in the CLI. Field rules come from
:mod:`autostep.validation`, the ones the core applies.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from autostep.trigger_kinds import CronConfig, ManualConfig, WebhookConfig
from autostep.validation import Description, Name, VersionNumber

__all__ = [
    "ChildrenPage",
    "ConditionTest",
    "ConditionVerdict",
    "CronTriggerIn",
    "DraftOut",
    "DraftPublished",
    "FunctionOut",
    "HookAccepted",
    "JobDetail",
    "JobListed",
    "JobOut",
    "JobPage",
    "JobStart",
    "ManualFire",
    "ManualTriggerIn",
    "ProcessOut",
    "ProjectIn",
    "ProjectOut",
    "ProjectPatch",
    "Published",
    "StepOut",
    "StepPosition",
    "TickOut",
    "TokenOut",
    "TransitionOut",
    "TriggerCreated",
    "TriggerDetail",
    "TriggerIn",
    "TriggerOut",
    "TriggerPage",
    "TriggerPatch",
    "VersionDetail",
    "VersionOut",
    "WebhookTriggerIn",
    "WorkflowDetail",
    "WorkflowOut",
]

JobStatusName = Literal["running", "succeeded", "failed", "cancelled"]
ProcessStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectIn(_Body):
    name: Name
    description: Description = ""


class ProjectPatch(_Body):
    """What to change; fields left out stay as they are."""

    name: Name | None = None
    description: Description | None = None


class ProjectOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    workflows: int = Field(description="Workflows in the project, archived ones included.")
    created_at: datetime


class WorkflowOut(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    description: str
    version: int | None = Field(description="The newest version's number.")
    archived_at: datetime | None
    created_at: datetime


class WorkflowDetail(WorkflowOut):
    versions: list[int]


class VersionOut(BaseModel):
    id: uuid.UUID
    workflow_id: uuid.UUID
    number: int
    start_step: str
    created_at: datetime


class TransitionOut(BaseModel):
    to: str
    when: str | None


class StepOut(BaseModel):
    name: str
    function: str
    start: bool
    config: dict[str, Any]
    input: dict[str, Any] | None
    for_each: str | None
    retries: int | None
    backoff: float | None
    timeout: float | None
    next: list[TransitionOut]


class VersionDetail(VersionOut):
    definition: dict[str, Any] = Field(description="The definition as stored.")
    steps: list[StepOut]


class Published(BaseModel):
    workflow: WorkflowDetail
    version: VersionOut
    warnings: list[str] = Field(
        description="Steps whose function no live runner serves (yet); published all the same."
    )


class DraftOut(BaseModel):
    """A workflow's draft; ``revision`` is also its ``ETag``."""

    workflow_id: uuid.UUID
    revision: int = Field(description="Grows by one on every write; send it back in `If-Match`.")
    definition: dict[str, Any] = Field(
        description="The definition being edited; checked whole only when published."
    )
    updated_at: datetime


class DraftPublished(Published):
    draft: DraftOut = Field(description="The draft after publishing: equal to the new version.")


class StepPosition(_Body):
    position: int = Field(ge=0, le=10_000, description="Where the step goes; 0 is first.")


class FunctionOut(BaseModel):
    name: str
    module: str
    description: str
    live: bool = Field(description="Whether a runner that serves it is alive.")
    runners: list[str] = Field(description="The live runners (`host:pid:random`).")
    last_heartbeat: datetime
    seconds_since_heartbeat: float
    policy: dict[str, Any] = Field(description="Default retries, backoff and timeout.")
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]


class ConditionTest(_Body):
    expression: str = Field(max_length=10_000, description="A CEL expression.")
    sample: dict[str, Any] = Field(
        default_factory=dict,
        description='The variables, e.g. `{"output": {...}, "input": {...}}`.',
    )


class ConditionVerdict(BaseModel):
    ok: bool
    result: Any = None
    error: str | None = None


class JobStart(_Body):
    input: dict[str, Any] = Field(default_factory=dict, description="The run's input.")
    version: VersionNumber | None = Field(
        default=None, description="A version number (default: the newest)."
    )


class ProcessOut(BaseModel):
    id: uuid.UUID
    job_id: uuid.UUID
    parent_id: uuid.UUID | None
    kind: Literal["task", "fanout"]
    step: str
    function: str
    item_index: int | None
    status: ProcessStatusName
    attempt: int
    error: str | None
    input: Any = Field(
        default=None,
        description="What the step's function was called with (after the step's input "
        "mapping); a fan-out parent's is the input its items were taken from.",
    )
    output: dict[str, Any] | None
    reused_from: uuid.UUID | None
    version: int
    started_at: datetime | None
    finished_at: datetime | None
    waiting: str | None = Field(
        description="Why a queued process waits: no live runner serves its function."
    )
    children: ChildrenPage | None = Field(
        default=None, description="A fan-out's first children; more from `next`."
    )


class ChildrenPage(BaseModel):
    items: list[ProcessOut]
    total: int
    next: int | None = Field(
        description="The item index to continue after (`?after=`), or null on the last page."
    )


class JobOut(BaseModel):
    id: uuid.UUID
    workflow_id: uuid.UUID
    version_id: uuid.UUID
    status: JobStatusName
    trigger: str
    rerun_of: uuid.UUID | None
    steps: int
    output: dict[str, Any] | None
    error: str | None
    version: int
    finished_at: datetime | None
    created_at: datetime


class JobListed(JobOut):
    workflow: str = Field(description="The workflow's name.")


class JobPage(BaseModel):
    items: list[JobListed]
    next: str | None = Field(description="The cursor of the next page, or null on the last.")


class JobDetail(JobOut):
    input: dict[str, Any]
    processes: list[ProcessOut] = Field(description="Top-level processes in creation order.")


# -- triggers ------------------------------------------------------------------------------

_TEMPLATE = Field(
    default=None,
    max_length=10_000,
    description="A CEL expression that makes the run's input from the kind's variables; "
    "null: the natural payload (cron `{}`, webhook the body, manual the preset).",
)


class _TriggerInBase(_Body):
    workflow_id: uuid.UUID = Field(description="The workflow the trigger starts runs of.")
    name: Name
    input_template: str | None = _TEMPLATE
    enabled: bool = True


class CronTriggerIn(_TriggerInBase):
    """Runs on a schedule (the Kubernetes CronJob grammar) in a time zone."""

    kind: Literal["cron"]
    config: CronConfig


class WebhookTriggerIn(_TriggerInBase):
    """Runs when `POST /hooks/{id}` is called with the trigger's token."""

    kind: Literal["webhook"]
    config: WebhookConfig = Field(default_factory=WebhookConfig)


class ManualTriggerIn(_TriggerInBase):
    """Runs on demand (`POST /triggers/{id}/fire`) with a preset input."""

    kind: Literal["manual"]
    config: ManualConfig = Field(default_factory=ManualConfig)


#: A new trigger, one model per kind (each registered kind has one here).
TriggerIn = Annotated[
    CronTriggerIn | WebhookTriggerIn | ManualTriggerIn, Field(discriminator="kind")
]


class TriggerPatch(_Body):
    """What to change; fields left out stay as they are."""

    name: Name | None = None
    config: dict[str, Any] | None = Field(
        default=None, description="Replaces the whole config; checked for the trigger's kind."
    )
    input_template: str | None = Field(
        default=None, max_length=10_000, description="null clears it (the natural payload)."
    )
    enabled: bool | None = None


class TriggerOut(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    workflow_id: uuid.UUID
    name: str
    kind: str
    enabled: bool
    config: dict[str, Any] = Field(description="The kind's config, defaults filled in.")
    input_template: str | None
    version: int = Field(description="Grows by one on every change.")
    path: str | None = Field(
        default=None, description="A webhook's URL path on the gateway, `/hooks/{id}`."
    )
    created_at: datetime
    updated_at: datetime


class TriggerPage(BaseModel):
    items: list[TriggerOut]
    next: str | None = Field(description="The cursor of the next page, or null on the last.")


class TickOut(BaseModel):
    scheduled_at: datetime
    outcome: Literal["started", "skipped"]
    reason: str | None = Field(description="Why the tick started no run.")
    job_id: uuid.UUID | None


class TriggerDetail(TriggerOut):
    next_fire_times: list[datetime] = Field(
        description="An enabled cron trigger's next five ticks (UTC); empty otherwise."
    )
    ticks: list[TickOut] = Field(description="A cron trigger's last ten ticks, newest first.")


class TokenOut(BaseModel):
    """A webhook's token: shown in this answer only (only its hash is stored)."""

    token: str
    curl: str = Field(description="A ready command that calls the webhook.")


class TriggerCreated(TriggerDetail):
    token: str | None = Field(
        description="A webhook's token, shown in this answer only; null for other kinds."
    )
    curl: str | None = Field(description="For a webhook: a ready command that calls it.")


class ManualFire(_Body):
    input: dict[str, Any] = Field(
        default_factory=dict, description="Keys that override the trigger's preset input."
    )


class HookAccepted(BaseModel):
    job_id: uuid.UUID
    status_url: str = Field(description="Where the run's progress is: `/jobs/{job_id}`.")


ProcessOut.model_rebuild()
