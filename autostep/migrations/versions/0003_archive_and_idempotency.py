"""Archiving workflows, and idempotency keys of job starts.

- ``workflow.archived_at``: when the workflow was archived (a soft delete:
  finished jobs keep pointing at its versions), NULL while it is active;
- ``idempotency_key``: the ``Idempotency-Key`` of each job start that sent
  one, per workflow, with a fingerprint of the request and the job it started.

Revision ID: 0003
Revises: 0002

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workflow", sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "idempotency_key",
        sa.Column("workflow_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("workflow_id", "key", name=op.f("pk_idempotency_key")),
    )


def downgrade() -> None:
    op.drop_table("idempotency_key")
    op.drop_column("workflow", "archived_at")
