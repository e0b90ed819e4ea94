"""Several training runs side by side: the schema of GET /v1/runs/compare, and when each rule first fired per run.

Runs are aligned on one step axis: the union of the steps any run logged, a point per step while the
steps span at most `max_points`, else `max_points` equal-width buckets of steps over that span (every
run bucketed the same way). A run with no record in a point's steps has null there. Per point, losses
and learning rates are means, gradient norms maxima (a spike survives downsampling), as in a run report.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from .schema import SEVERITY_ORDER, Finding, Severity

MIN_RUNS, MAX_RUNS = 2, 8

RunValues = dict[str, list[float | None]]  # run id -> values aligned with RunComparison.steps


class ComparedRun(BaseModel):
    """One run of the comparison: its counters, verdict and findings."""

    id: str
    name: str
    health: str
    num_layers: int
    run_steps: int
    first_step: int | None
    last_step: int | None
    dropped_steps: int
    findings: list[Finding] = Field(default_factory=list)


class RuleTiming(BaseModel):
    """When one rule first fired in each run (null: it did not fire there)."""

    rule: str
    first_step: dict[str, int | None]
    """Run id -> the earliest first step of the rule's findings in that run."""
    severity: dict[str, Severity | None]
    """Run id -> the worst severity of the rule's findings in that run."""
    fired_in: int
    """How many of the runs it fired in."""
    spread: int | None
    """Latest minus earliest first step among the runs where it fired with a step (null: fewer than two)."""


class RunComparison(BaseModel):
    """Several runs on one step axis: loss, lr, global and per-layer gradient norms, findings, rule timings."""

    runs: list[ComparedRun]
    steps: list[int] = Field(default_factory=list)
    """The shared axis: the first step of each point's bucket (the step itself when not downsampled)."""
    max_points: int
    """The most points a series has (the `points` asked for)."""
    bucket_steps: int = 1
    """How many steps one point covers at most (1: not downsampled)."""
    loss: RunValues = Field(default_factory=dict)
    lr: RunValues = Field(default_factory=dict)
    global_grad_norm: RunValues = Field(default_factory=dict)
    layers: dict[str, RunValues] = Field(default_factory=dict)
    """Charted layer name -> run id -> gradient norm; a run without that layer is all null."""
    rules: list[RuleTiming] = Field(default_factory=list)


def rule_timings(runs: list[ComparedRun]) -> list[RuleTiming]:
    """Each rule that fired in any run, with its first step and worst severity per run, earliest first."""
    rules = sorted({f.rule for run in runs for f in run.findings})
    timings = []
    for rule in rules:
        first: dict[str, int | None] = {}
        worst: dict[str, Severity | None] = {}
        for run in runs:
            found = [f for f in run.findings if f.rule == rule]
            steps = [f.step for f in found if f.step is not None]
            first[run.id] = min(steps) if steps else None
            ranked = sorted((f.severity for f in found), key=SEVERITY_ORDER.__getitem__)
            worst[run.id] = ranked[-1] if ranked else None
        fired = [s for s in first.values() if s is not None]
        timings.append(
            RuleTiming(
                rule=rule,
                first_step=first,
                severity=worst,
                fired_in=sum(s is not None for s in worst.values()),
                spread=max(fired) - min(fired) if len(fired) >= 2 else None,
            )
        )
    return sorted(
        timings, key=lambda t: (min((s for s in t.first_step.values() if s is not None), default=2**63), t.rule)
    )
