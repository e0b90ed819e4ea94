"""Typed results of the REST API; unknown fields are kept so a newer server never breaks a client."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ._constants import TERMINAL_STATES

AnalysisStatus = Literal["queued", "running", "succeeded", "failed"]
ReportFormat = Literal["json", "markdown", "html", "junit"]


class _Result(BaseModel):
    """Response bodies: extra fields allowed, `model_*` names allowed."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class ModelPackage(_Result):
    """An uploaded model package."""

    id: str
    """Use as `model_id` when creating an analysis."""
    sha256: str
    """Hex digest of the uploaded bytes; the server deduplicates on it per project."""
    format: str
    """`torch.export` (the only format the service runs)."""
    num_parameters: int | None = None
    returns_loss: bool | None = None
    """True when the package computes its own loss; False means a named loss must be sent."""
    size_bytes: int
    filename: str | None = None
    name: str | None = None
    """Registry name (upload with name=...); None for an unnamed upload."""
    version: int | None = None
    """Version within the name: refer to it as NAME:VERSION, or NAME:latest for the newest."""
    tags: list[str] = []
    created_at: datetime


class Batch(_Result):
    """An uploaded batch and the tensor shapes the server read from it."""

    id: str
    sha256: str
    shapes: dict[str, list[int]]
    size_bytes: int
    filename: str | None = None
    created_at: datetime


class Progress(_Result):
    """Where a running analysis is."""

    phase: str
    """The engine phase, e.g. `queued`, `loading`, `forward_backward`, `rules`, `done`."""
    fraction: float
    """0..1."""


class AnalysisFailure(_Result):
    """Why an analysis failed."""

    code: str
    """Stable machine-readable reason."""
    message: str
    """What went wrong and what to change."""


class Analysis(_Result):
    """An analysis and its state; poll it with `client.analyses.retrieve()` or `.wait()`."""

    id: str
    status: AnalysisStatus
    model_id: str
    batch_id: str
    """The first (or only) batch."""
    batch_ids: list[str] = Field(default_factory=list)
    """Every batch analysed, in order (older servers leave it empty: read batch_id)."""
    progress: Progress
    error: AnalysisFailure | None = None
    """Set when status is `failed`."""
    health: str | None = None
    """The report's health once succeeded: healthy, warning, error or critical."""
    attempts: int = 0
    note: str | None = None
    run_seconds: float | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    report_url: str | None = None

    @property
    def done(self) -> bool:
        """True once the analysis succeeded or failed."""
        return self.status in TERMINAL_STATES


class Audit(_Result):
    """A scheduled audit; `webhook_secret` is present only in the answer to create()."""

    id: str
    name: str
    schedule: str
    model: str
    batch_id: str
    status: Literal["active", "paused"]
    notify_on: str
    webhook_url: str | None = None
    next_run_at: datetime | None = None
    webhook_secret: str | None = None


class AuditRun(_Result):
    """One run of an audit: its analysis, health, and comparison with the previous run."""

    id: str
    audit_id: str
    slot: datetime
    trigger: str
    status: Literal["running", "succeeded", "failed"]
    analysis_id: str | None = None
    health: str | None = None
    regressed: bool | None = None
    comparison: dict | None = None  # type: ignore[type-arg]


class WebhookDelivery(_Result):
    """One webhook delivery attempt."""

    id: str
    run_id: str
    attempt: int
    ok: bool
    status_code: int | None = None
    error: str | None = None


class Run(_Result):
    """A watched training run; `webhook_secret` is present only in the answer to create()."""

    id: str
    name: str
    num_layers: int
    metrics: list[str]
    run_steps: int = 0
    health: str = "healthy"
    webhook_url: str | None = None
    webhook_secret: str | None = None
