"""The outbox wakes its relay only for step messages that are due.

A ``NOTIFY`` takes a database-wide lock while its transaction commits, so
one on every insert made the commits of every runner wait on each other.
Now the statement trigger on ``outbox`` notifies only when the statement
inserted a step message that is due at once: a run started by a trigger,
the gateway or the CLI. The function runners publish the step messages of
their own transactions themselves (their rows are due only after a grace,
for the relay to publish if the runner could not), and the rows of events
are found by the relay's poll (``relay_poll_seconds`` while busy).

Revision ID: 0006
Revises: 0005

"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NOTIFY_DUE_STEPS = """
CREATE OR REPLACE FUNCTION autostep_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE type = 'step' AND available_at <= now()) THEN
        PERFORM pg_notify('autostep_outbox', '');
    END IF;
    RETURN NULL;
END $$
"""
NOTIFY_EVERY_INSERT = """
CREATE OR REPLACE FUNCTION autostep_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('autostep_outbox', '');
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.execute("DROP TRIGGER outbox_notify ON outbox")
    op.execute(NOTIFY_DUE_STEPS)
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox REFERENCING NEW TABLE AS inserted "
        "FOR EACH STATEMENT EXECUTE FUNCTION autostep_outbox_notify()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER outbox_notify ON outbox")
    op.execute(NOTIFY_EVERY_INSERT)
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION autostep_outbox_notify()"
    )
