"""Analysis options shared by the engine, the CLI and (later) the REST API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Precision = Literal["fp32", "fp16", "bf16"]
Check = Literal["standard", "noise", "curvature", "verify", "full"]  # what AnalysisOptions.checks may name
# "full" is shorthand for every measuring check; "verify" (training trials, docs/verify.md) is only run when named.
FULL_CHECKS: tuple[Check, ...] = ("standard", "noise", "curvature")


def _probes_for_an_interval(value: int) -> int:
    """One probe gives a trace with no spread to build an interval from."""
    if value == 1:
        raise ValueError("trace_probes must be 0 (no trace) or at least 2 (one probe gives no interval)")
    return value


# How many of the largest Hessian eigenvalues Lanczos converges (residual bound 2%; each one more costs products)
TopEigenvalues = Annotated[int, Field(ge=1, le=20)]
# Hutch++ remainder probes for the Hessian trace; 0 leaves the trace out
TraceProbes = Annotated[int, Field(ge=0, le=100), AfterValidator(_probes_for_an_interval)]


class OptimizerSpec(BaseModel):
    """The optimizer the user trains with; needed for update-size and lr rules."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # stored and replayed: finite only

    name: Literal["sgd", "adam", "adamw"]
    lr: float = Field(gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=0.0, ge=0)
    eps: float = Field(default=1e-8, gt=0)


# The optimizer verify trains with when the analysis names none (and the one advice that depends on the
# optimizer assumes then).
DEFAULT_OPTIMIZER = OptimizerSpec(name="sgd", lr=0.01, momentum=0.9)


class AnalysisOptions(BaseModel):
    """What to check and under which training set-up."""

    model_config = ConfigDict(extra="forbid")

    loss: str | None = None
    optimizer: OptimizerSpec | None = None
    precision: Precision = "fp32"
    checks: tuple[Check, ...] = ("standard",)
    device: str | None = None
    curvature_iterations: int = Field(default=30, ge=2, le=500)  # most Hessian-vector products per Lanczos run
    top_eigenvalues: TopEigenvalues = 1
    trace_probes: TraceProbes = 4
    verify_steps: int = Field(default=30, ge=1, le=200)  # optimizer steps per verify trial (K)
    verify_max_trials: int = Field(default=8, ge=1, le=32)  # remediation trials per analysis (baseline not counted)

    def runs(self, check: Check) -> bool:
        """Whether this analysis includes a check, with "full" standing for all of them."""
        return check in self.checks or ("full" in self.checks and check in FULL_CHECKS)
