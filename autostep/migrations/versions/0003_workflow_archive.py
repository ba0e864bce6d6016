"""Archiving workflows.

- ``workflow.archived_at``: when the workflow was archived (a soft delete:
  finished jobs keep pointing at its versions), NULL while it is active.

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


def downgrade() -> None:
    op.drop_column("workflow", "archived_at")
