"""Analyses over several batches: batch_ids holds the JSON list when there is more than one (issue 13).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("analyses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_ids", sa.Text(), nullable=True))
    # Existing rows analysed one batch: batch_ids stays NULL and batch_id says which.


def downgrade() -> None:
    with op.batch_alter_table("analyses", schema=None) as batch_op:
        batch_op.drop_column("batch_ids")
