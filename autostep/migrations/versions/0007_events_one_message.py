"""A transaction's events travel as one message, routed by what they are about.

The relay used to publish each event of an outbox row of events as a
message of its own, routed by the event's type. It now publishes the row as
one message, whose routing key is written with the row: ``job.events`` for
a job's events, ``trigger.events`` for a trigger's. Rows of events still in
the outbox at the upgrade were written with no routing key; this gives them
theirs, so they reach the same followers.

Revision ID: 0007
Revises: 0006

"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE outbox SET routing_key = aggregate_type || '.events' "
        "WHERE type = 'events' AND routing_key = ''"
    )


def downgrade() -> None:
    op.execute("UPDATE outbox SET routing_key = '' WHERE type = 'events'")
