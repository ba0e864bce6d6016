"""The autostep schema, one module per service: catalog, runs, messaging, registry, triggers."""

from autostep.models.base import Base
from autostep.models.catalog import (
    Project,
    Step,
    Transition,
    Workflow,
    WorkflowDraft,
    WorkflowVersion,
)
from autostep.models.messaging import Inbox, Outbox
from autostep.models.registry import FunctionRunner
from autostep.models.runs import (
    IdempotencyKey,
    Job,
    JobStatus,
    Process,
    ProcessKind,
    ProcessStatus,
)
from autostep.models.triggers import TickOutcome, Trigger, TriggerTick

__all__ = [
    "Base",
    "FunctionRunner",
    "IdempotencyKey",
    "Inbox",
    "Job",
    "JobStatus",
    "Outbox",
    "Process",
    "ProcessKind",
    "ProcessStatus",
    "Project",
    "Step",
    "TickOutcome",
    "Transition",
    "Trigger",
    "TriggerTick",
    "Workflow",
    "WorkflowDraft",
    "WorkflowVersion",
]
