"""No doubled effect: one message delivered twice at the same moment runs once.

A crash after the broker redelivered a message, or two runners holding the
same message after a connection flapped, can put two deliveries of one step
message in flight at once. The inbox row, inserted in each delivery's own
transaction, makes the second wait for the first and then skip: the function
is called once, its effect commits once. The function here waits on an event
that the test opens only once the second delivery is already waiting, so the
two truly overlap; a counter outside any transaction counts the calls.
"""

from __future__ import annotations

import uuid
from typing import Any

import eventlet
from eventlet.event import Event
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, text

from autostep import StepContext, function
from autostep.catalog import publish_workflow
from autostep.db import unit_of_work
from autostep.functions.runner import StepOutcome, run_step
from autostep.models import Outbox, Process
from autostep.runs import start_job
from autostep.sdk import REGISTRY
from tests.helpers import until, waiting_on_a_lock

called: list[uuid.UUID] = []
gates: list[Event] = []


class Anything(BaseModel):
    model_config = ConfigDict(extra="allow")


@function(name="t_gate", retries=0)
def gate(inp: Anything, ctx: StepContext) -> Anything:
    """Counts its call, waits for the test to open the gate, then records its effect."""
    called.append(ctx.process_id)
    gates[-1].wait()
    ctx.session.execute(
        text("INSERT INTO test_effect (process_id, step, value) VALUES (:p, :s, 1)"),
        {"p": ctx.process_id, "s": ctx.step},
    )
    return Anything(called=True)


def test_two_deliveries_of_one_message_at_once_call_the_function_once(
    session_factory: Any, project: str, database_url: str, effect_table: None
) -> None:
    definition = {"name": "gate", "steps": [{"name": "only", "function": "t_gate"}]}
    with unit_of_work(session_factory) as session:
        publish_workflow(session, project, definition)
        job_id = start_job(session, project, "gate", {}).id
        process_id = session.scalar(select(Process.id).where(Process.job_id == job_id))
        row = session.scalar(
            select(Outbox).where(Outbox.type == "step", Outbox.aggregate_id == process_id)
        )
        assert row is not None
    called.clear()
    gates.append(Event())

    def deliver() -> StepOutcome:
        return run_step(
            session_factory, REGISTRY["t_gate"], row.payload, str(row.id), consumer="fn"
        )

    first = eventlet.spawn(deliver)
    until(lambda: len(called) == 1)  # the first delivery is inside the function
    second = eventlet.spawn(deliver)
    until(lambda: waiting_on_a_lock(database_url) == 1)  # ...the second waits on its inbox row
    gates[-1].send()
    outcomes = sorted([first.wait(), second.wait()])

    assert called == [process_id]
    assert outcomes == sorted([StepOutcome.SUCCEEDED, StepOutcome.SKIPPED])
    with unit_of_work(session_factory) as session:
        effects = session.scalar(
            text("SELECT count(*) FROM test_effect WHERE process_id = :p"), {"p": process_id}
        )
    assert effects == 1
