"""Request and response bodies; analysis options reuse the engine's own pydantic models."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Literal

from gradhealth.diagnostics.losses import NAMED_LOSSES
from gradhealth.diagnostics.options import (
    AnalysisOptions,
    Check,
    OptimizerSpec,
    Precision,
    TopEigenvalues,
    TraceProbes,
)
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


def _as_utc(value: datetime) -> datetime:
    """Naive values are UTC (the database stores them so); aware ones are converted, within the calendar."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time falls outside years 1-9999 once converted to UTC") from None


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class Public(BaseModel):
    """Response models read straight from ORM rows."""

    model_config = ConfigDict(from_attributes=True, protected_namespaces=())


class ModelPublic(Public):
    """An uploaded model package."""

    id: str
    sha256: str
    format: str = Field(description="torch.export (TorchScript is refused)")
    num_parameters: int | None = None
    returns_loss: bool | None = Field(
        default=None, description="true: the package computes its loss; false: name a loss"
    )
    size_bytes: int
    filename: str | None = None
    name: str | None = Field(default=None, description="registry name; None for an unnamed upload")
    version: int | None = Field(default=None, description="version within the name, from 1")
    tags: list[str] = Field(default_factory=list)
    created_at: UtcDatetime

    @field_validator("tags", mode="before")
    @classmethod
    def _parse_tags(cls, value: object) -> object:
        """The database keeps tags as JSON text (or NULL)."""
        if value is None:
            return []
        return json.loads(value) if isinstance(value, str) else value


class ModelsPublic(BaseModel):
    """A page of models."""

    data: list[ModelPublic]
    count: int


class BatchPublic(Public):
    """An uploaded batch, with its tensor shapes."""

    id: str
    sha256: str
    shapes: dict[str, list[int]]
    size_bytes: int
    filename: str | None = None
    created_at: UtcDatetime

    @field_validator("shapes", mode="before")
    @classmethod
    def _parse_stored(cls, value: object) -> object:
        """The database keeps shapes as JSON text."""
        return json.loads(value) if isinstance(value, str) else value


class AnalysisSetup(BaseModel):
    """The training set-up an analysis runs under (see the engine's AnalysisOptions)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    loss: str | None = Field(default=None, description="for plain models: " + ", ".join(NAMED_LOSSES))
    optimizer: OptimizerSpec | None = None
    precision: Precision = "fp32"
    checks: tuple[Check, ...] = ("standard",)
    verify_steps: int = Field(default=30, ge=1, le=200, description="optimizer steps per verify trial")
    verify_max_trials: int = Field(default=8, ge=1, le=32, description="remediation trials per analysis (verify)")
    top_eigenvalues: TopEigenvalues = Field(
        default=1, description="curvature: how many of the largest Hessian eigenvalues to converge (residual bound 2%)"
    )
    trace_probes: TraceProbes = Field(
        default=4, description="curvature: Hutch++ probes for the Hessian trace; 0 leaves it out, 1 is refused"
    )

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str | None) -> str | None:
        if value is not None and value not in NAMED_LOSSES:
            raise ValueError(f"unknown loss {value!r}; use one of: {', '.join(sorted(NAMED_LOSSES))}")
        return value

    def options(self) -> AnalysisOptions:
        """The engine options this request stands for."""
        return AnalysisOptions(
            loss=self.loss,
            optimizer=self.optimizer,
            precision=self.precision,
            checks=self.checks,
            verify_steps=self.verify_steps,
            verify_max_trials=self.verify_max_trials,
            top_eigenvalues=self.top_eigenvalues,
            trace_probes=self.trace_probes,
        )


MAX_BATCHES = 16  # the engine's bound too (diagnostics.multi_batch.MAX_BATCHES)
BatchId = Annotated[str, Field(min_length=1, max_length=64)]


class AnalysisCreate(AnalysisSetup):
    """What to analyse and under which training set-up."""

    model_id: str = Field(description="a model id, NAME:latest or NAME:N")
    batch_id: BatchId | None = Field(default=None, description="one batch; or give batch_ids")
    batch_ids: list[BatchId] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_BATCHES,
        description=(
            f"1 to {MAX_BATCHES} batches, all shaped alike: the report is the first batch's, plus "
            "estimates across_batches.<name> (mean, 95% t-interval over batches) and findings that fire "
            "on a majority of batches. Give this or batch_id, not both"
        ),
    )

    @model_validator(mode="after")
    def _one_batch_field(self) -> AnalysisCreate:
        """Exactly one of batch_id and batch_ids, so a request never means two things."""
        if (self.batch_id is None) == (self.batch_ids is None):
            raise ValueError("give exactly one of batch_id (one batch) and batch_ids (a list of batches)")
        return self

    def batches(self) -> list[str]:
        """The batch ids in order, whichever field named them."""
        return list(self.batch_ids) if self.batch_ids is not None else [str(self.batch_id)]


class Progress(BaseModel):
    """Where a running analysis is: the engine phase and the fraction done."""

    phase: str
    fraction: float


class AnalysisError(BaseModel):
    """Why an analysis failed: a stable code and a message that says what to fix."""

    code: str
    message: str


class AnalysisPublic(BaseModel):
    """An analysis and its state."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    model_id: str
    batch_id: str = Field(description="the first (or only) batch")
    batch_ids: list[str] = Field(default_factory=list, description="every batch analysed, in order")
    progress: Progress
    error: AnalysisError | None = None
    health: str | None = None
    attempts: int
    note: str | None = None
    run_seconds: float | None = Field(default=None, description="worker time to load and analyse")
    created_at: UtcDatetime
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None
    report_url: str | None = None


class AnalysesPublic(BaseModel):
    """A page of analyses, newest first."""

    data: list[AnalysisPublic]
    count: int


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("webhook_url must be an http:// or https:// URL")
    return value


WebhookUrl = Annotated[str, Field(max_length=2000), AfterValidator(_http_url)]
"""Where signed notifications go (audits and runs)."""
