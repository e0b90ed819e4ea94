"""Request and response bodies of /v1/runs (the log batches themselves are decoded in run_codec)."""

from __future__ import annotations

from typing import Any

from gradhealth.diagnostics.run_rules.metrics import METRICS
from gradhealth.report import Finding
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from .paging import INT64_MAX
from .run_extras_codec import check_declared
from .schemas import UtcDatetime, WebhookUrl

MAX_LAYERS = 100_000


class RunLayer(BaseModel):
    """One watched layer: its module path, type and size; its index is its column in every batch."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=500)
    type: str = Field(default="", max_length=200)
    num_parameters: StrictInt = Field(default=0, ge=0, le=INT64_MAX)


class RunCreate(BaseModel):
    """Start a run: the layer list is sent once; the metric list fixes the order of every batch's columns."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    layers: list[RunLayer] = Field(min_length=1, max_length=MAX_LAYERS)
    metrics: list[str] = Field(default_factory=lambda: list(METRICS), min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    webhook_url: WebhookUrl | None = None

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, value: list[RunLayer]) -> list[RunLayer]:
        seen: set[str] = set()
        repeated = sorted({layer.name for layer in value if layer.name in seen or seen.add(layer.name)})
        if repeated:
            raise ValueError(f"layer names must be unique; repeated: {repeated[:5]}")
        return value

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(METRICS))
        if unknown or len(set(value)) != len(value):
            raise ValueError(f"metrics must be distinct names from {list(METRICS)}; got unknown {unknown}")
        return value

    @field_validator("config")
    @classmethod
    def _small_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_declared(value)
        if len(str({k: v for k, v in value.items() if k != "activations"})) > 16_384:
            raise ValueError("config is limited to 16 KiB; keep it to settings, not data")
        return value


class RunPublic(BaseModel):
    """A run's counters and verdict so far."""

    id: str
    name: str
    num_layers: int
    metrics: list[str]
    run_steps: int
    first_step: int | None
    last_step: int | None
    batches: int
    dropped_steps: int
    health: str
    webhook_url: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class RunsPublic(BaseModel):
    """One page of runs, like every list endpoint: the items and the total."""

    data: list[RunPublic]
    count: int


class RunCreated(RunPublic):
    """The new run, with its webhook signing secret: shown only this once."""

    webhook_secret: str


class LogAck(BaseModel):
    """The answer to a log batch: stored false means this (run, seq) was already stored."""

    stored: bool
    seq: int
    steps: int
    run_steps: int
    health: str


class LayerHistory(BaseModel):
    """One layer's full history of one metric; null where not measured or non-finite."""

    layer: str
    metric: str
    steps: list[int]
    values: list[float | None]
    nonfinite_steps: list[int]


class RunFindings(BaseModel):
    """The run's current findings at or above a severity, with its health and logged steps."""

    data: list[Finding]
    count: int
    health: str
    run_steps: int
