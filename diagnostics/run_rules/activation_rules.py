"""dead_relu and saturated_activation as run rules: fractions read by watch(activations=...) during training.

The thresholds are the checkpoint rules' (diagnostics/rules/dead_relu.py, saturated_activation.py): a
ReLU is flagged when at least half of its units are dead on the batch (error at 90%); a sigmoid/tanh
when half of its outputs sit where the derivative is below 1% of its maximum (error at 90%); a
GELU/SiLU-like function when its flat share is what pre-activations 4x (error: 16x) off unit scale give.
A run adds time: the condition must hold on CONFIRM reads in a row (one unlucky batch is not a dead
layer), its start is the first of those reads, and it ends after CONFIRM reads back below the
warning level. Units that die mid-run (a large step pushes a bias negative) show as a start step
after the first read; an activation that is bad from its first read began at step 0 of its reads.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gradhealth.report import Finding, Remediation
from gradhealth.report.schema import Severity

from ..activations import gaussian_flat_share
from ..rules import dead_relu as checkpoint_dead
from ..rules import saturated_activation as checkpoint_saturated
from .chunk import ChunkView
from .common import RunContext, fmt, span

CONFIRM = 3
DEAD_KINDS = frozenset({"relu", "relu6"})
MAX_LISTED = 8


def _thresholds(rule_id: str, kind: str) -> tuple[float, float] | None:
    """(warning, error) fraction of one activation kind for this rule, as the checkpoint rule has them."""
    if rule_id == checkpoint_dead.RULE_ID:
        return (checkpoint_dead.WARNING_FRACTION, checkpoint_dead.ERROR_FRACTION) if kind in DEAD_KINDS else None
    if kind in checkpoint_saturated.SATURATING:
        return checkpoint_saturated.WARNING_FRACTION, checkpoint_saturated.ERROR_FRACTION
    if kind in checkpoint_saturated.RECTIFYING:
        return (
            gaussian_flat_share(kind, checkpoint_saturated.WARNING_SCALE),
            gaussian_flat_share(kind, checkpoint_saturated.ERROR_SCALE),
        )
    return None


class _FractionRule:
    """Per activation: a streak of reads at or above the warning level, its start step, and the worst and last value."""

    rule_id: ClassVar[str]
    row: ClassVar[int]  # 0: dead, 1: saturated (the activations array's second axis)
    title: ClassVar[str]
    describe: ClassVar[str]
    remediation: ClassVar[list[Remediation]]

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        st = state or {}
        self.kinds: list[str] = list(st.get("kinds", []))
        self.streak: list[int] = list(st.get("streak", []))  # reads in a row at/above warning (or below, when on)
        self.start: list[int | None] = list(st.get("start", []))  # the first read of the current streak
        self.began: list[int | None] = list(st.get("began", []))  # confirmed: the step the condition began
        self.first: list[float | None] = list(st.get("first", []))  # the first fraction read
        self.last: list[float | None] = list(st.get("last", []))
        self.last_step: list[int | None] = list(st.get("last_step", []))
        self.worst: list[float | None] = list(st.get("worst", []))

    def _grow(self, count: int) -> None:
        missing = count - len(self.kinds)
        if missing > 0:
            self.kinds += [""] * missing
            self.streak += [0] * missing
            for column in (self.start, self.began, self.first, self.last, self.last_step, self.worst):
                column += [None] * missing

    def update(self, v: ChunkView) -> None:
        """Walk the rows where any activation was read, in step order."""
        values = v.activations[:, self.row, :] if v.activations.size else np.zeros((v.n, 0))
        self._grow(values.shape[1])
        for a, kind in enumerate(v.activation_kinds[: values.shape[1]]):
            self.kinds[a] = kind
        for index in np.flatnonzero(~np.isnan(values).all(axis=1)) if values.size else []:
            step = int(v.steps[index])
            for a in np.flatnonzero(~np.isnan(values[index])).tolist():
                self._read(a, step, float(values[index, a]))

    def _read(self, a: int, step: int, value: float) -> None:
        limits = _thresholds(self.rule_id, self.kinds[a])
        if limits is None:
            return
        if self.first[a] is None:
            self.first[a] = value
        self.last[a], self.last_step[a] = value, step
        bad = value >= limits[0]
        if self.began[a] is None:  # counting bad reads towards a start
            self.streak[a], self.start[a] = (
                (self.streak[a] + 1, self.start[a] if self.streak[a] else step) if bad else (0, None)
            )
            if self.streak[a] >= CONFIRM:
                self.began[a], self.streak[a], self.worst[a] = self.start[a], 0, value
        else:  # counting good reads towards an end
            self.worst[a] = max(self.worst[a] or 0.0, value)
            self.streak[a] = 0 if bad else self.streak[a] + 1
            if self.streak[a] >= CONFIRM:
                self.began[a], self.start[a], self.streak[a], self.worst[a] = None, None, 0, None

    def findings(self, ctx: RunContext) -> list[Finding]:
        """One finding listing every activation in the condition now, at the earliest start step."""
        on = [a for a, began in enumerate(self.began) if began is not None and a < len(ctx.activations)]
        if not on:
            return []
        limits = {a: _thresholds(self.rule_id, self.kinds[a]) or (1.0, 1.0) for a in on}
        severity: Severity = "error" if any((self.last[a] or 0.0) >= limits[a][1] for a in on) else "warning"
        start = min(self.began[a] or 0 for a in on)
        names = [ctx.activations[a] for a in on]
        details = ", ".join(
            f"{ctx.activations[a]} ({self.kinds[a]}) {fmt(100 * (self.last[a] or 0.0))}% since step {self.began[a]}"
            f" (first read {fmt(100 * (self.first[a] or 0.0))}%)"
            for a in on[:MAX_LISTED]
        )
        first = on[0]
        return [
            Finding(
                rule=self.rule_id,
                severity=severity,
                title=self.title,
                message=f"{self.describe} in {span(names)} during training: {details}.",
                layers=names,
                step=start,
                last_step=max(self.last_step[a] or 0 for a in on),
                evidence={
                    "began_step": start,
                    "activation": ctx.activations[first],
                    "activation_kind": self.kinds[first],
                    "activations": names,
                    "last_step": max(self.last_step[a] or 0 for a in on),
                    **{f"began:{ctx.activations[a]}": self.began[a] for a in on[:20]},
                    **{f"fraction:{ctx.activations[a]}": self.last[a] for a in on[:20]},
                    **{f"first_fraction:{ctx.activations[a]}": self.first[a] for a in on[:20]},
                },
                thresholds={
                    "warning_fraction": limits[first][0],
                    "error_fraction": limits[first][1],
                    "confirm_reads": CONFIRM,
                },
                remediation=self.remediation,
                confidence=0.8,  # CONFIRM reads in a row on batches of the run's own size
            )
        ]

    def summary(self) -> dict[str, float | int | None]:
        return {}

    def state(self) -> dict[str, Any]:
        return {
            "kinds": self.kinds,
            "streak": self.streak,
            "start": self.start,
            "began": self.began,
            "first": self.first,
            "last": self.last,
            "last_step": self.last_step,
            "worst": self.worst,
        }


class DeadReluRunRule(_FractionRule):
    """ReLU units that stop firing for a whole batch, read during training."""

    rule_id: ClassVar[str] = checkpoint_dead.RULE_ID
    row: ClassVar[int] = 0
    title: ClassVar[str] = "Dead ReLU units during training"
    describe: ClassVar[str] = "Units never active on the batch (no gradient flows through them)"
    remediation: ClassVar[list[Remediation]] = [
        Remediation(
            action="use_leaky_activation",
            detail="Replace ReLU with LeakyReLU or GELU so inactive units still pass a gradient.",
            snippet="nn.LeakyReLU(negative_slope=0.01)  # or nn.GELU()",
            params={"activation": "leaky_relu", "negative_slope": 0.01},
        ),
        Remediation(
            action="lower_lr",
            detail="Units that die mid-run were pushed there by a large update (a high learning rate or a "
            "loss spike drives the preceding biases negative): lower the learning rate or clip gradients.",
        ),
    ]


class SaturatedActivationRunRule(_FractionRule):
    """Sigmoid/tanh (or GELU/SiLU far off scale) outputs in their flat region, read during training."""

    rule_id: ClassVar[str] = checkpoint_saturated.RULE_ID
    row: ClassVar[int] = 1
    title: ClassVar[str] = "Saturated activations during training"
    describe: ClassVar[str] = "Outputs in the flat region (derivative < 1% of its maximum)"
    remediation: ClassVar[list[Remediation]] = [
        Remediation(
            action="normalize_preactivations",
            detail="Keep pre-activations near zero: add LayerNorm/BatchNorm before the activation, and lower "
            "the learning rate if the saturation began after a large update.",
        ),
    ]
