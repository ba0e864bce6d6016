"""Triggers: what starts runs on its own, and the ticks cron triggers fired.

- ``trigger``: one row per trigger of a workflow (its kind, config, input
  template, webhook token hash, ``version`` counting its changes);
- ``trigger_tick``: one row per scheduled time a cron trigger handled, keyed
  by (trigger, scheduled time) so every tick fires at most once;
- ``job.trigger_id``: the trigger that started a job, with an index of the
  running jobs per trigger (the concurrency policies read it every tick).

Revision ID: 0005
Revises: 0004

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "trigger",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("workflow_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "config", postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), nullable=False
        ),
        sa.Column("input_template", sa.Text(), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        sa.Column("active_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
            name=op.f("fk_trigger_project_id_project"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflow.id"],
            name=op.f("fk_trigger_workflow_id_workflow"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trigger")),
        sa.UniqueConstraint("workflow_id", "name", name=op.f("uq_trigger_workflow_id")),
    )
    op.create_index("ix_trigger_project_id", "trigger", ["project_id"], unique=False)
    op.create_table(
        "trigger_tick",
        sa.Column("trigger_id", sa.Uuid(), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["trigger_id"],
            ["trigger.id"],
            name=op.f("fk_trigger_tick_trigger_id_trigger"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trigger_id", "scheduled_at", name=op.f("pk_trigger_tick")),
    )
    op.add_column("job", sa.Column("trigger_id", sa.Uuid(), nullable=True))
    op.create_index(
        "ix_job_trigger_running",
        "job",
        ["trigger_id"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )


def downgrade() -> None:
    op.drop_index("ix_job_trigger_running", table_name="job")
    op.drop_column("job", "trigger_id")
    op.drop_table("trigger_tick")
    op.drop_index("ix_trigger_project_id", table_name="trigger")
    op.drop_table("trigger")
