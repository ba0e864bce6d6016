"""Firing ticks in a batch does what firing them one by one does, case by case.

Each case sets up two identical triggers, each on a workflow of its own
(same trigger name, so the templated inputs match): one is fired with
:func:`autostep.firing.fire_tick`, tick by tick, the other with
:func:`autostep.tick_batch.fire_ticks`, all its ticks in one call. Their
results, recorded ticks, jobs, processes and outbox rows must be the same,
ids aside. No function runs: jobs stay running, which ``forbid`` looks at.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from autostep import firing, triggers
from autostep.catalog import archive_workflow
from autostep.db import unit_of_work
from autostep.models import Job, Outbox, Process, TriggerTick
from autostep.outbox import shard_of
from autostep.tick_batch import fire_ticks
from tests.helpers import publish, without_ids_and_times

TICK = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LATER = TICK + timedelta(minutes=10)
TEMPLATE = '{"at": scheduled_time, "by": trigger.name}'


def _setup(
    session_factory: Any, project: str, case: str, config: dict[str, Any]
) -> tuple[uuid.UUID, str]:
    """A workflow and its trigger ``t``, as ``case`` wants them; the trigger's id, the name."""
    name = f"w-{uuid.uuid4().hex[:8]}"
    publish(session_factory, project, {"name": name, "steps": [{"name": "a", "function": "f"}]})
    template = "[scheduled_time]" if case == "failing template" else TEMPLATE
    with unit_of_work(session_factory) as session:
        trigger = triggers.create_trigger(
            session,
            project,
            name,
            "t",
            "cron",
            {"schedule": "*/10 * * * *", **config},
            input_template=template,
        ).trigger
        trigger.active_since = TICK - timedelta(days=1)
        trigger_id, workflow_id = trigger.id, trigger.workflow_id
    before = {"forbid, a run in flight": TICK - timedelta(minutes=10), "already fired": TICK}
    if case in before:
        with unit_of_work(session_factory) as session:
            firing.fire_tick(session, trigger_id, before[case], now=TICK)
    with unit_of_work(session_factory) as session:
        if case == "disabled":
            triggers.update_trigger(session, trigger_id, enabled=False)
        elif case == "deleted":
            triggers.delete_trigger(session, trigger_id)
        elif case == "archived workflow":
            archive_workflow(session, workflow_id)
    return trigger_id, name


def _outcome(
    session_factory: Any, made: tuple[uuid.UUID, str], results: list[Any]
) -> dict[str, Any]:
    """What firing left, ids and the workflow's name left out."""
    trigger_id, name = made

    def why(reason: str | None) -> str | None:
        return reason.replace(name, "W") if reason else reason

    with unit_of_work(session_factory) as session:
        ticks = session.scalars(
            select(TriggerTick)
            .where(TriggerTick.trigger_id == trigger_id)
            .order_by(TriggerTick.scheduled_at)
        )
        jobs = session.scalars(
            select(Job).where(Job.trigger_id == trigger_id).order_by(Job.created_at, Job.input)
        ).all()
        job_ids = [job.id for job in jobs]
        processes = session.scalars(
            select(Process).where(Process.job_id.in_(job_ids)).order_by(Process.created_at)
        ).all()
        aggregates = [*job_ids, *(process.id for process in processes)]
        outbox = session.scalars(
            select(Outbox).where(Outbox.aggregate_id.in_(aggregates)).order_by(Outbox.seq)
        ).all()
        by_job = {job_id: n for n, job_id in enumerate(job_ids)}
        owner = {process.id: process.job_id for process in processes} | {j: j for j in job_ids}
        return {
            "results": [
                (r.outcome, r.scheduled_at, r.job_id is not None, why(r.reason)) for r in results
            ],
            "ticks": [
                (t.scheduled_at, t.outcome, why(t.reason), t.job_id in by_job) for t in ticks
            ],
            "jobs": [(j.status, j.trigger, j.input, j.steps, j.version) for j in jobs],
            # by job (two jobs of one transaction share their created_at), then as created
            "processes": sorted(
                (
                    (by_job[p.job_id], p.step, p.function, p.status, p.attempt, p.input, p.version)
                    for p in processes
                ),
                key=lambda row: row[0],
            ),
            "outbox": [
                (
                    by_job[owner[row.aggregate_id]],
                    row.type,
                    row.exchange,
                    row.routing_key,
                    row.mandatory,
                    row.shard == shard_of(owner[row.aggregate_id]),
                    without_ids_and_times(row.payload),
                )
                for row in outbox
            ],
        }


CASES = [
    ("allow", {}, [TICK, LATER], TICK),
    ("forbid, a run in flight", {"concurrency": "forbid"}, [TICK], TICK),
    ("forbid, two ticks in one batch", {"concurrency": "forbid"}, [TICK, LATER], LATER),
    ("deadline missed", {"starting_deadline_seconds": 60}, [TICK, LATER], LATER),
    ("disabled", {}, [TICK], TICK),
    ("deleted", {}, [TICK], TICK),
    ("archived workflow", {}, [TICK], TICK),
    ("failing template", {}, [TICK], TICK),
    ("already fired", {}, [TICK], TICK),
    ("replace", {"concurrency": "replace"}, [TICK, LATER], LATER),
]  # fmt: skip


@pytest.mark.parametrize(("case", "config", "ticks", "now"), CASES, ids=[c[0] for c in CASES])
def test_a_batch_fires_as_fire_tick_does(
    session_factory: Any,
    project: str,
    case: str,
    config: dict[str, Any],
    ticks: list[datetime],
    now: datetime,
) -> None:
    single = _setup(session_factory, project, case, config)
    batch = _setup(session_factory, project, case, config)
    with unit_of_work(session_factory) as session:
        one_by_one = [firing.fire_tick(session, single[0], at, now=now) for at in ticks]
    with unit_of_work(session_factory) as session:
        together = fire_ticks(session, [(batch[0], at) for at in ticks], now=now)
    expected = _outcome(session_factory, single, one_by_one)
    assert _outcome(session_factory, batch, together) == expected
    assert expected["results"], "the case fired nothing"


def test_a_batch_of_many_triggers_keeps_each_ones_order_and_outcome(
    session_factory: Any, project: str
) -> None:
    cases = ["allow", "disabled", "failing template", "already fired"]
    ids = [_setup(session_factory, project, case, {})[0] for case in cases]
    wanted = [(trigger_id, at) for at in (TICK, LATER) for trigger_id in ids]
    with unit_of_work(session_factory) as session:
        results = fire_ticks(session, wanted, now=LATER)
    pairs = zip(results, wanted, strict=True)
    assert [(r.trigger_id, r.scheduled_at or at) for r, (_, at) in pairs] == wanted
    outcomes = [r.outcome.value for r in results[:4]]
    assert outcomes == ["started", "disabled", "skipped", "already_fired"]


class _Crash(Exception):
    """Stands for a crash after the batch's statements, before its commit."""


def test_a_batch_rolled_back_leaves_neither_ticks_nor_jobs(
    session_factory: Any, project: str
) -> None:
    ids = [_setup(session_factory, project, "allow", {})[0] for _ in range(3)]
    with pytest.raises(_Crash), unit_of_work(session_factory) as session:
        results = fire_ticks(session, [(trigger_id, TICK) for trigger_id in ids], now=TICK)
        assert [r.outcome.value for r in results] == ["started"] * 3
        raise _Crash
    with unit_of_work(session_factory) as session:
        jobs = session.scalars(select(Job.id).where(Job.trigger_id.in_(ids))).all()
        ticks = session.scalars(select(TriggerTick).where(TriggerTick.trigger_id.in_(ids))).all()
    # a tick's row and its job commit together: without the commit, neither is there
    assert (len(jobs), len(ticks)) == (0, 0)
