"""Webhook outbox: a delivery row is pending while due_at is set; claimed_at is the sending worker's lease.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
TABLES = ("webhook_deliveries", "run_webhook_deliveries")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("due_at", sa.DateTime(), nullable=True))
            batch_op.add_column(sa.Column("claimed_at", sa.DateTime(), nullable=True))
            batch_op.create_index(f"ix_{table}_due_at", ["due_at"])
    # Rows written before the outbox are finished attempts: due_at stays NULL.


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_due_at")
            batch_op.drop_column("claimed_at")
            batch_op.drop_column("due_at")
