"""Webhook deliveries record a failure category; stored raw connection errors are replaced by fixed sentences.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None
TABLES = ("webhook_deliveries", "run_webhook_deliveries")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("category", sa.String(length=32), nullable=True))
        # Old rows kept exception text (ConnectError [Errno 111] ...): enough to map internal ports.
        op.execute(
            f"UPDATE {table} SET category = 'http_status', error = 'the receiver answered HTTP ' || status_code "
            "WHERE ok = false AND status_code IS NOT NULL"
        )
        op.execute(
            f"UPDATE {table} SET category = 'connect_failed', "
            "error = 'could not connect to the receiver, or it closed the connection early' "
            "WHERE ok = false AND status_code IS NULL AND error IS NOT NULL"
        )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("category")
