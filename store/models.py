"""Database tables: projects own keys, models, batches, analyses, audits and watched training runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
TERMINAL = (SUCCEEDED, FAILED)


def utcnow() -> datetime:
    """Naive UTC: the one timestamp form that compares the same in SQLite and PostgreSQL."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_id() -> str:
    """Random ids: unguessable, so ids never leak another project's row count."""
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    """Declarative base shared with the Alembic migrations."""


class Project(Base):
    """A tenant: every resource belongs to exactly one."""

    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ApiKey(Base):
    """An API key, stored only as its sha256; scopes is a comma list of read/write/admin."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ModelPackage(Base):
    """An uploaded model archive; the bytes are in the blob store under sha256."""

    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("project_id", "sha256", name="uq_models_project_sha256"),
        UniqueConstraint("project_id", "name", "version", name="uq_models_project_name_version"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(32))
    # Registry: a named upload is version max+1 of that name in the project; tags is a JSON list.
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tags: Mapped[str | None] = mapped_column(Text, nullable=True)
    num_parameters: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    returns_loss: Mapped[bool | None] = mapped_column(nullable=True)
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Batch(Base):
    """An uploaded safetensors batch; shapes is JSON {name: [dims]}."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("project_id", "sha256", name="uq_batches_project_sha256"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    shapes: Mapped[str] = mapped_column(Text)
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Analysis(Base):
    """One requested analysis and its life: queued -> running -> succeeded | failed."""

    __tablename__ = "analyses"
    __table_args__ = (
        Index("ix_analyses_status_heartbeat", "status", "heartbeat_at"),
        UniqueConstraint("project_id", "idempotency_key", name="uq_analyses_project_idempotency"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))  # the first batch
    # JSON list of every batch id, in order, when there are several; NULL for one batch (batch_id).
    batch_ids: Mapped[str | None] = mapped_column(Text, nullable=True)
    options: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    phase: Mapped[str] = mapped_column(String(32), default=QUEUED)
    fraction: Mapped[float] = mapped_column(Float, default=0.0)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    health: Mapped[str | None] = mapped_column(String(16), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    run_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    enqueued_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The client's Idempotency-Key: a retried POST finds this row instead of queuing a twin.
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)


class StoredReport(Base):
    """The report JSON, at most one per analysis (primary key = analysis id)."""

    __tablename__ = "reports"
    analysis_id: Mapped[str] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


ACTIVE, PAUSED = "active", "paused"


class Audit(Base):
    """A scheduled re-analysis of a model reference (id, name:latest or name:N) on a stored batch."""

    __tablename__ = "audits"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    schedule: Mapped[str] = mapped_column(String(120))
    model_ref: Mapped[str] = mapped_column(String(255))
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    options: Mapped[str] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # Kept in clear: signing needs it. Shown to the user once, at creation.
    webhook_secret: Mapped[str] = mapped_column(String(80))
    notify_on: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    # The newest schedule slot already run; the next slot is the cron's next time after it.
    last_slot: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AuditRun(Base):
    """One run of an audit; (audit_id, slot) is unique, so a schedule slot runs exactly once."""

    __tablename__ = "audit_runs"
    __table_args__ = (UniqueConstraint("audit_id", "slot", name="uq_audit_runs_audit_slot"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), index=True)
    slot: Mapped[datetime] = mapped_column(DateTime)
    trigger: Mapped[str] = mapped_column(String(16))
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"), nullable=True)
    analysis_id: Mapped[str | None] = mapped_column(
        ForeignKey("analyses.id", ondelete="SET NULL"), nullable=True, index=True
    )
    status: Mapped[str] = mapped_column(String(16), default=RUNNING)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    health: Mapped[str | None] = mapped_column(String(16), nullable=True)
    previous_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    regressed: Mapped[bool | None] = mapped_column(nullable=True)
    comparison: Mapped[str | None] = mapped_column(Text, nullable=True)
    notify: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class WebhookDelivery(Base):
    """One attempt to deliver one run's notification: every attempt is a row."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("run_id", "attempt", name="uq_webhook_deliveries_run_attempt"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("audit_runs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(2000))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ok: Mapped[bool] = mapped_column(default=False)
    # connect_failed | timeout | http_status | refused_address (None when delivered); error is a fixed sentence.
    category: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Outbox (store/outbox.py): pending while due_at is set; claimed_at is the sending worker's lease.
    due_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    @property
    def pending(self) -> bool:
        """Not attempted yet (or being attempted now)."""
        return self.due_at is not None


class TrainingRun(Base):
    """A training run streamed by watch(): its layer columns, rule state and verdict so far."""

    __tablename__ = "training_runs"
    __table_args__ = (UniqueConstraint("project_id", "idempotency_key", name="uq_training_runs_project_idempotency"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    layers: Mapped[str] = mapped_column(Text)  # JSON list of {name, type, num_parameters}; index = column
    metrics: Mapped[str] = mapped_column(Text)  # JSON list of metric names; order of a segment's rows
    config: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    num_steps: Mapped[int] = mapped_column(BigInteger, default=0)
    first_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    num_batches: Mapped[int] = mapped_column(Integer, default=0)
    dropped: Mapped[int] = mapped_column(BigInteger, default=0)
    health: Mapped[str] = mapped_column(String(16), default="healthy")
    rule_state: Mapped[str] = mapped_column(Text, default="{}")  # RunEvaluator.state()
    findings: Mapped[str] = mapped_column(Text, default="[]")
    latest: Mapped[str] = mapped_column(Text, default="{}")  # last measured value per metric per layer
    webhook_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    webhook_secret: Mapped[str] = mapped_column(String(80))
    notified_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RunBatch(Base):
    """One accepted log batch: the primary key (run, seq) is what makes a retried POST a no-op."""

    __tablename__ = "run_batches"
    run_id: Mapped[str] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    num_steps: Mapped[int] = mapped_column(Integer)
    first_step: Mapped[int] = mapped_column(BigInteger)
    last_step: Mapped[int] = mapped_column(BigInteger)
    dropped: Mapped[int] = mapped_column(BigInteger, default=0)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class RunSegment(Base):
    """One batch's values of one series (a layer, or the run-level series -1) as packed arrays.

    See store/run_segments.py for the layout and why it is one row per (run, series, batch).
    """

    __tablename__ = "run_segments"
    __table_args__ = (Index("ix_run_segments_series_step", "run_id", "series", "first_step"),)
    run_id: Mapped[str] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True)
    series: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    first_step: Mapped[int] = mapped_column(BigInteger)
    num_steps: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RunWebhookDelivery(Base):
    """One attempt to tell a run's webhook that the run went bad: every attempt is a row."""

    __tablename__ = "run_webhook_deliveries"
    __table_args__ = (UniqueConstraint("run_id", "attempt", name="uq_run_webhook_deliveries_run_attempt"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(2000))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ok: Mapped[bool] = mapped_column(default=False)
    # connect_failed | timeout | http_status | refused_address (None when delivered); error is a fixed sentence.
    category: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Outbox (store/outbox.py): pending while due_at is set; claimed_at is the sending worker's lease.
    due_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    @property
    def pending(self) -> bool:
        """Not attempted yet (or being attempted now)."""
        return self.due_at is not None


class Deletion(Base):
    """Who deleted what and when: one row per deleted resource; kept after the resource (no foreign keys)."""

    __tablename__ = "deletions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # analysis | run | batch | model | blob
    object_id: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(120))  # key:<api key id> or cli:<command>
    reason: Mapped[str] = mapped_column(String(32))  # request | prune
    deleted_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
