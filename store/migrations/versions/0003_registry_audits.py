"""Model registry (name, version, tags), audits, audit runs and webhook deliveries.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tags", sa.Text(), nullable=True))
        batch_op.create_unique_constraint("uq_models_project_name_version", ["project_id", "name", "version"])

    op.create_table(
        "audits",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("schedule", sa.String(length=120), nullable=False),
        sa.Column("model_ref", sa.String(length=255), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("webhook_url", sa.String(length=2000), nullable=True),
        sa.Column("webhook_secret", sa.String(length=80), nullable=False),
        sa.Column("notify_on", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_slot", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audits_project_id"), ["project_id"], unique=False)

    op.create_table(
        "audit_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("audit_id", sa.String(length=36), nullable=False),
        sa.Column("slot", sa.DateTime(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("model_id", sa.String(length=36), nullable=True),
        sa.Column("analysis_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("health", sa.String(length=16), nullable=True),
        sa.Column("previous_run_id", sa.String(length=36), nullable=True),
        sa.Column("regressed", sa.Boolean(), nullable=True),
        sa.Column("comparison", sa.Text(), nullable=True),
        sa.Column("notify", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["analysis_id"], ["analyses.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["audit_id"], ["audits.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("audit_id", "slot", name="uq_audit_runs_audit_slot"),
    )
    with op.batch_alter_table("audit_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_runs_audit_id"), ["audit_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_runs_analysis_id"), ["analysis_id"], unique=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("audit_id", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["audit_id"], ["audits.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["audit_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "attempt", name="uq_webhook_deliveries_run_attempt"),
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_audit_id"), ["audit_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_audit_id"))
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("audit_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_runs_analysis_id"))
        batch_op.drop_index(batch_op.f("ix_audit_runs_audit_id"))
    op.drop_table("audit_runs")
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audits_project_id"))
    op.drop_table("audits")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_constraint("uq_models_project_name_version", type_="unique")
        batch_op.drop_column("tags")
        batch_op.drop_column("version")
        batch_op.drop_column("name")
