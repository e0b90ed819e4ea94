"""saturated_activation: units in their flat region (sigmoid/tanh, or GELU/SiLU for x << 0) pass almost no gradient."""

from __future__ import annotations

from gradhealth.report import Finding, Remediation

from ..activations import gaussian_flat_share
from ..measurements import Measurements
from .activation_rule import fraction_findings
from .common import REFS, fmt

RULE_ID = "saturated_activation"

# A unit counts as saturated when its local derivative is below 1% of its maximum
# (activations.FLAT_DERIVATIVE_FRACTION).
# SageMaker Debugger and DeepDiagnosis fire when more than 50% of a layer is saturated; at 90% the
# layer is effectively a constant.
WARNING_FRACTION = 0.5
ERROR_FRACTION = 0.9


SATURATING = {"sigmoid", "tanh", "hardsigmoid", "hardtanh", "lstm_gates"}
# Rectifier-like functions (GELU, SiLU, ...) are flat only for x << 0, so their flat share stays below
# 50% at any scale. Unit-scale pre-activations (LayerNorm before a variance-preserving layer) make a
# few percent flat; the thresholds are the flat share that Gaussian pre-activations 4x (warning) and
# 16x (error) that scale would give, computed from each function's own derivative.
RECTIFYING = {"gelu", "silu", "mish", "elu", "selu", "softplus", "hardswish"}
WARNING_SCALE = 4.0
ERROR_SCALE = 16.0


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when sigmoid/tanh units sit in their flat region, or a rectifier's inputs are far off scale."""
    findings = _saturating(m)
    for kind in sorted({a.kind for a in m.activations} & RECTIFYING):
        findings += _rectifying(m, kind)
    return findings


def _saturating(m: Measurements) -> list[Finding]:
    """Sigmoid/tanh-like units: at least half of the outputs in the flat region."""
    return fraction_findings(
        m,
        rule=RULE_ID,
        title="Saturated activations",
        kinds=SATURATING,
        value=lambda a: a.saturated,
        warning=WARNING_FRACTION,
        error=ERROR_FRACTION,
        describe="Outputs in the flat region (derivative < 1% of its maximum)",
        remediation=[
            Remediation(
                action="normalize_preactivations",
                detail="Keep pre-activations near zero: standardise inputs, add LayerNorm/BatchNorm before the activation.",
                references=[REFS["ioffe2015"], REFS["ba2016"]],
            ),
            Remediation(
                action="reinitialize",
                detail="Re-initialise with Xavier (Glorot) scaling, gain from nn.init.calculate_gain, and lower the learning rate.",
                snippet="nn.init.xavier_normal_(layer.weight, gain=nn.init.calculate_gain('tanh'))",
                references=[REFS["glorot2010"]],
                params={"init": "xavier_normal"},
            ),
            Remediation(
                action="use_non_saturating_activation",
                detail="For hidden layers, prefer ReLU/GELU, which do not saturate for positive inputs.",
                references=[REFS["he2015"]],
                params={"activation": "gelu"},
            ),
        ],
    )


def _rectifying(m: Measurements, kind: str) -> list[Finding]:
    """GELU/SiLU-like units: a flat share only pre-activations far off unit scale produce."""
    return fraction_findings(
        m,
        rule=RULE_ID,
        title=f"{kind.upper()} units in their flat region",
        kinds={kind},
        value=lambda a: a.saturated,
        warning=gaussian_flat_share(kind, WARNING_SCALE),
        error=gaussian_flat_share(kind, ERROR_SCALE),
        describe=f"{kind} units with derivative < 1% of its maximum (inputs far below zero), "
        f"more than pre-activations {fmt(WARNING_SCALE)}x the unit scale would give",
        remediation=[
            Remediation(
                action="rescale_preactivations",
                detail="The layer feeding the activation produces inputs far off unit scale: re-initialise its "
                "weights to a variance-preserving std (gain/sqrt(fan_in), or the std 0.02 transformers use) and "
                "check for weights that grew during training (lower the learning rate, clip gradients).",
                snippet="nn.init.normal_(layer.weight, std=0.02); nn.init.zeros_(layer.bias)",
                references=[REFS["he2015"], REFS["glorot2010"]],
                params={"init": "normal", "std": 0.02},
            ),
            Remediation(
                action="normalize_preactivations",
                detail="Normalise the feeding layer's input (LayerNorm/RMSNorm before it, as in pre-LN blocks).",
                references=[REFS["ba2016"], REFS["xiong2020"]],
            ),
        ],
    )
