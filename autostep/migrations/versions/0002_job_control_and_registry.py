"""Job control and the function registry.

- ``job.rerun_of``: the job a rerun repeats (its succeeded steps are reused);
- ``job.steps``: steps entered so far, checked against the workflow's step
  budget so that a runaway loop ends;
- ``process.reused_from``: in a rerun, the process of the original job whose
  committed output this one carries (the function did not run again);
- ``function_runner``: which runner serves which function, with its input and
  output JSON Schemas and retry policy, and when it last said it is alive.

Revision ID: 0002
Revises: 0001

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONB = postgresql.JSONB(none_as_null=True, astext_type=sa.Text())


def upgrade() -> None:
    op.add_column("job", sa.Column("rerun_of", sa.Uuid(), nullable=True))
    op.add_column("job", sa.Column("steps", sa.Integer(), server_default="0", nullable=False))
    op.create_index("ix_job_rerun_of", "job", ["rerun_of"], unique=False)
    op.add_column("process", sa.Column("reused_from", sa.Uuid(), nullable=True))
    op.create_table(
        "function_runner",
        sa.Column("function", sa.String(length=100), nullable=False),
        sa.Column("runner", sa.String(length=200), nullable=False),
        sa.Column("module", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("input_schema", JSONB, nullable=False),
        sa.Column("output_schema", JSONB, nullable=False),
        sa.Column("policy", JSONB, nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "heartbeat_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("function", "runner", name=op.f("pk_function_runner")),
    )


def downgrade() -> None:
    op.drop_table("function_runner")
    op.drop_column("process", "reused_from")
    op.drop_index("ix_job_rerun_of", table_name="job")
    op.drop_column("job", "steps")
    op.drop_column("job", "rerun_of")
