"""A run started in two statements is stored as the ORM path stores it.

:func:`autostep.runs.start_job` builds a run in Python and writes it in one
statement (:mod:`autostep.starts`), unless its start step fans out: those
runs take the ORM path (:func:`autostep.runs.start_with_orm`). What follows
a start (the runner, the relay, the grid) must not tell the two apart, so
both must store the same job, first process and outbox rows. Either way
the workflow is share-locked until the start commits, so that archiving
waits for the run and then sees it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import eventlet
import pytest
from sqlalchemy import select

from autostep.catalog import archive_workflow, lock_start_version
from autostep.db import unit_of_work
from autostep.events import JobFields
from autostep.exceptions import ConflictError, NotFoundError
from autostep.models import Job, Outbox, Process
from autostep.outbox import shard_of
from autostep.runs import start_job, start_with_orm
from tests.helpers import publish, until, waiting_on_a_lock, without_ids_and_times

DEFINITION = {
    "name": "w",
    "steps": [
        {
            "name": "first",
            "function": "fibo",
            "input": {"n": "input.k + 1"},
            "retries": 2,
            "next": [{"to": "second"}],
        },
        {"name": "second", "function": "fibo"},
    ],
}
INPUT = {"k": 4, "note": "kept"}


def _start(session_factory: Any, project: str, *, orm: bool) -> tuple[JobFields, dict[str, Any]]:
    """Start a run one way or the other; the job it returned and what the database holds."""
    with unit_of_work(session_factory) as session:
        if orm:
            version = lock_start_version(session, project, "w")
            started = start_with_orm(session, version, "api", INPUT)
        else:
            started = start_job(session, project, "w", INPUT)
    with unit_of_work(session_factory) as session:
        job = session.get(Job, started.id)
        assert job is not None
        processes = session.scalars(select(Process).where(Process.job_id == job.id)).all()
        owners = [job.id, *(process.id for process in processes)]
        outbox = session.scalars(
            select(Outbox).where(Outbox.aggregate_id.in_(owners)).order_by(Outbox.seq)
        ).all()
        stored = {
            "job": (
                job.status,
                job.trigger,
                job.trigger_id,
                job.input,
                job.steps,
                job.version,
                job.output,
                job.error,
                job.finished_at,
                job.rerun_of,
            ),
            "processes": [
                (
                    p.kind,
                    p.step,
                    p.function,
                    p.status,
                    p.attempt,
                    p.input,
                    p.version,
                    p.parent_id,
                    p.item_index,
                    p.pending,
                    p.started_at,
                )
                for p in processes
            ],
            "outbox": [
                (
                    row.type,
                    row.exchange,
                    row.routing_key,
                    row.mandatory,
                    row.shard == shard_of(job.id),
                    row.attempts,
                    row.available_at <= row.created_at,  # due at once
                    without_ids_and_times(row.payload),
                )
                for row in outbox
            ],
        }
    return started, stored


def test_a_run_started_in_two_statements_is_stored_as_the_orm_path_stores_it(
    session_factory: Any, project: str
) -> None:
    publish(session_factory, project, DEFINITION)

    lean, stored = _start(session_factory, project, orm=False)
    _, by_orm = _start(session_factory, project, orm=True)

    assert stored == by_orm
    assert stored["processes"][0][5] == {"n": 5}  # the start step's input mapping
    assert [row[0] for row in stored["outbox"]] == ["events", "step"]
    assert (lean.status, lean.steps, lean.input) == ("running", 1, INPUT)  # the job as stored


def test_start_job_names_the_workflow_version_or_state_that_refuses_it(
    session_factory: Any, project: str
) -> None:
    publish(session_factory, project, DEFINITION)
    unknown = str(uuid.uuid4())
    refusals = {
        "no workflow 'nope' in project": lambda s: start_job(s, project, "nope", {}),
        f"no workflow '{unknown}' in project": lambda s: start_job(s, project, unknown, {}),
        "no workflow 'w' in project 'elsewhere'": lambda s: start_job(s, "elsewhere", "w", {}),
        "has no version 7": lambda s: start_job(s, project, "w", {}, version=7),
        "has no version 100000000000": lambda s: start_job(s, project, "w", {}, version=10**11),
    }
    for message, start in refusals.items():
        with (
            pytest.raises(NotFoundError, match=re.escape(message)),
            unit_of_work(session_factory) as session,
        ):
            start(session)
    with unit_of_work(session_factory) as session:
        assert start_job(session, project, "w", {"k": 1}, version=1).steps == 1


def test_archiving_waits_for_a_run_being_started_then_refuses_and_an_archived_one_starts_none(
    session_factory: Any, project: str, database_url: str
) -> None:
    publish(session_factory, project, DEFINITION)
    publish(session_factory, project, {**DEFINITION, "name": "idle"})
    with unit_of_work(session_factory) as session:
        workflow_id = lock_start_version(session, project, "w").workflow_id

    def archive(workflow: uuid.UUID | str) -> Any:
        with unit_of_work(session_factory) as session:
            return archive_workflow(session, workflow)

    with unit_of_work(session_factory) as starting:
        start_job(starting, project, "w", INPUT)
        archiving = eventlet.spawn(archive, workflow_id)
        until(lambda: waiting_on_a_lock(database_url) == 1)  # on the start's share lock
    # the run is committed now: archiving sees it in flight
    with pytest.raises(ConflictError, match="1 run"):
        archiving.wait()

    with unit_of_work(session_factory) as session:
        idle = lock_start_version(session, project, "idle").workflow_id
    archive(idle)
    with pytest.raises(ConflictError, match="is archived"), unit_of_work(session_factory) as s:
        start_job(s, project, "idle", INPUT)
