"""The versioned JSON report schema shared by the engine, the service and the SDK (plain pydantic: no torch)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Final = "1"

Severity = Literal["info", "warning", "error", "critical"]
Health = Literal["healthy", "warning", "error", "critical"]

SEVERITY_ORDER: dict[str, int] = {"info": 0, "warning": 1, "error": 2, "critical": 3}
# A report's health is its worst finding's severity, where info findings leave it healthy: one ranking, two names.
HEALTH_ORDER: dict[str, int] = {("healthy" if s == "info" else s): rank for s, rank in SEVERITY_ORDER.items()}

# The stable rule-id vocabulary (DESIGN §2): an id never changes meaning. The engine's registries
# (gradhealth.diagnostics.rules.RULE_IDS, gradhealth.diagnostics.run_rules.RUN_RULE_IDS) are tested to match.
CHECKPOINT_RULE_IDS: tuple[str, ...] = (
    "non_finite",
    "unscaled_targets",  # root cause of update_ratio/exploding_gradient/lr_too_high on raw regression targets
    "vanishing_gradient",
    "exploding_gradient",
    "dead_relu",
    "saturated_activation",
    "unused_parameters",
    "input_not_normalized",
    "lr_too_high",
    "update_ratio",
    "fp16_underflow",
    "poor_initialization",
    "batch_size_wasteful",  # noise check: the batch is >= 10x the gradient noise scale
    "noisy_layer",  # noise check: a layer's GSNR is a decade below the rest
)
RUN_RULE_IDS: tuple[str, ...] = (
    "non_finite",
    "gradient_spike",
    "loss_divergence",
    "vanishing_gradient",
    "stalled_layer",
    "update_ratio",
    "loss_plateau",
    "oscillating_loss",
    "loss_spike",
    "dead_relu",
    "saturated_activation",
)


def severity_at_least(severity: str, floor: str) -> bool:
    """Compare severities by rank, so callers never compare strings."""
    return SEVERITY_ORDER[severity] >= SEVERITY_ORDER[floor]


# A remediation's machine-applicable parameters: scalars, or vectors (per-feature statistics, layer lists).
RemediationParam = float | int | str | bool | None | list[float] | list[str]
VerificationStatus = Literal["verified", "not_improved", "not_applicable", "failed"]


class TrialTrajectory(BaseModel):
    """One short training trial: what the loss, gradient norm and the finding's own metric did."""

    loss: list[float | None] = Field(default_factory=list)  # per step; None where non-finite
    grad_norm: list[float | None] = Field(default_factory=list)
    non_finite_steps: int = 0
    evidence: dict[str, float | None] = Field(default_factory=dict)  # the finding's metric re-measured after the trial
    seconds: float | None = None  # this trial's wall time: its steps, the final loss and the re-measure


class Verification(BaseModel):
    """The measured effect of applying a remediation to a copy of the model (the `verify` check)."""

    status: VerificationStatus
    reason: str | None = None  # why not_applicable/failed, in words
    steps: int = 0
    optimizer: dict[str, float | str | None] = Field(default_factory=dict)
    baseline: TrialTrajectory | None = None
    remediated: TrialTrajectory | None = None
    improved: bool | None = None
    criterion: str | None = None  # the stated test `improved` answers, e.g. "final loss 10% lower, no NaN"


class Remediation(BaseModel):
    """One concrete change the user can make, with code and sources."""

    action: str
    detail: str
    snippet: str | None = None
    references: list[str] = Field(default_factory=list)
    params: dict[str, RemediationParam] = Field(default_factory=dict)
    verification: Verification | None = None  # set by the verify check only


class Finding(BaseModel):
    """A rule's verdict: what is wrong, where, the numbers and what to do."""

    rule: str
    severity: Severity
    title: str
    message: str
    layers: list[str] = Field(default_factory=list)
    step: int | None = None
    last_step: int | None = None  # run reports: the finding covers steps step..last_step
    evidence: dict[str, float | int | str | bool | None | list[float] | list[str]] = Field(default_factory=dict)
    thresholds: dict[str, float | int | str] = Field(default_factory=dict)
    remediation: list[Remediation] = Field(default_factory=list)
    confidence: float = Field(ge=0.0, le=1.0)
    caused_by: list[str] = Field(default_factory=list)  # rule ids of root-cause findings in the same report


class SkippedCheck(BaseModel):
    """A requested check that could not run, and why: a report never drops one silently."""

    check: str
    reason: str


class Estimate(BaseModel):
    """A stochastic estimate with its own uncertainty: a number a rule may act on only as surely as this says."""

    value: float
    low: float | None = None  # confidence interval at `level`; None where the estimator gives none
    high: float | None = None
    level: float = Field(default=0.95, gt=0.0, lt=1.0)
    samples: int = Field(default=1, ge=1)  # samples, probe vectors or batches behind the value
    method: str = ""  # e.g. "hutchinson", "lanczos residual bound", "bootstrap over samples"


class CurvatureSpectrum(BaseModel):
    """The loss Hessian's top eigenvalues and, optionally, its spectral density (stochastic Lanczos quadrature)."""

    top_eigenvalues: list[float] = Field(default_factory=list)  # algebraic, largest first
    density_grid: list[float] = Field(default_factory=list)
    density: list[float] = Field(default_factory=list)  # aligned with density_grid


class ActivationStats(BaseModel):
    """Statistics of one activation op's output on the batch."""

    kind: str
    dead_fraction: float | None = None
    saturated_fraction: float | None = None
    mean: float
    std: float


class LayerStats(BaseModel):
    """Per-layer gradient, weight and activation statistics from one forward+backward."""

    name: str
    type: str
    num_parameters: int
    grad_norm: float | None = None
    grad_rms: float | None = None
    weight_norm: float | None = None
    weight_rms: float | None = None
    grad_to_weight: float | None = None
    update_to_weight: float | None = None
    nonfinite: int = 0
    fp16_underflow_fraction: float | None = None
    output_grad_rms: float | None = None
    output_rms: float | None = None
    activation: ActivationStats | None = None
    gsnr: Estimate | None = None  # gradient signal-to-noise ratio over the batch's samples (noise check)
    extra: dict[str, float | int | str | None | list[float]] = Field(default_factory=dict)


class LayerTimeline(BaseModel):
    """One layer's downsampled history: values aligned with Timeline.steps (None where unlogged)."""

    grad_norm: list[float | None] = Field(default_factory=list)
    grad_max_abs: list[float | None] = Field(default_factory=list)
    weight_norm: list[float | None] = Field(default_factory=list)
    update_to_weight: list[float | None] = Field(default_factory=list)
    nonfinite: list[float | None] = Field(default_factory=list)


class LayerDistribution(BaseModel):
    """One layer's gradient and weight distributions over time (watch()'s sketches): TensorBoard's distributions.

    `grad` and `weight` hold, per sketched step, the values at the `quantiles` levels (of the finite
    values; None when none was finite or the kind was not sketched); the counts are per step too.
    """

    steps: list[int] = Field(default_factory=list)
    quantiles: list[float] = Field(default_factory=list)
    grad: list[list[float | None]] = Field(default_factory=list)
    weight: list[list[float | None]] = Field(default_factory=list)
    grad_zeros: list[float | None] = Field(default_factory=list)
    grad_nonfinite: list[float | None] = Field(default_factory=list)
    weight_zeros: list[float | None] = Field(default_factory=list)
    weight_nonfinite: list[float | None] = Field(default_factory=list)
    count: list[float | None] = Field(default_factory=list)


class ActivationSeries(BaseModel):
    """One activation module's dead and saturated fractions at the steps watch(activations=...) read them."""

    kind: str = ""
    steps: list[int] = Field(default_factory=list)
    dead: list[float | None] = Field(default_factory=list)
    saturated: list[float | None] = Field(default_factory=list)


class Timeline(BaseModel):
    """A run's history for charts: one point per bucket of steps, at most a few hundred points."""

    steps: list[int] = Field(default_factory=list)
    loss: list[float | None] = Field(default_factory=list)
    lr: list[float | None] = Field(default_factory=list)
    global_grad_norm: list[float | None] = Field(default_factory=list)
    layers: dict[str, LayerTimeline] = Field(default_factory=dict)
    distributions: dict[str, LayerDistribution] = Field(default_factory=dict)  # the charted layers' sketches
    activations: dict[str, ActivationSeries] = Field(default_factory=dict)


class ModelInfo(BaseModel):
    """What was analysed."""

    format: str
    num_parameters: int
    num_layers: int
    dtype: str
    device: str


class Report(BaseModel):
    """A gradient-health report (schema version 1)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal["1"] = SCHEMA_VERSION
    id: str
    kind: Literal["checkpoint", "run"] = "checkpoint"
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    health: Health
    summary: str
    model: ModelInfo
    findings: list[Finding] = Field(default_factory=list)
    layers: list[LayerStats] = Field(default_factory=list)
    metrics: dict[str, float | int | None | list[float] | dict[str, float]] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    timeline: Timeline | None = None  # run reports only
    skipped: list[SkippedCheck] = Field(default_factory=list)
    estimates: dict[str, Estimate] = Field(default_factory=dict)  # noise/curvature statistics with intervals
    spectrum: CurvatureSpectrum | None = None
    # analyses under "full": each layer's gradient and weight quantiles on the batch (one step, 0); runs: timeline
    distributions: dict[str, LayerDistribution] = Field(default_factory=dict)

    def findings_for(self, rule: str) -> list[Finding]:
        """Return the findings of one rule id."""
        return [f for f in self.findings if f.rule == rule]


def health_of(findings: list[Finding]) -> Health:
    """The report's health is its worst finding; info findings leave it healthy."""
    worst: Severity = max((f.severity for f in findings), key=SEVERITY_ORDER.__getitem__, default="info")
    return "healthy" if worst == "info" else worst
