"""saturated_activation: sigmoid/tanh units in their flat region pass almost no gradient."""

from __future__ import annotations

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements
from .activation_rule import fraction_findings
from .common import REFS

RULE_ID = "saturated_activation"

# A unit counts as saturated when its local derivative is below 1% of its maximum (probes.py).
# SageMaker Debugger and DeepDiagnosis fire when more than 50% of a layer is saturated; at 90% the
# layer is effectively a constant.
WARNING_FRACTION = 0.5
ERROR_FRACTION = 0.9


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when at least half of a sigmoid/tanh layer's outputs sit in the flat region."""
    return fraction_findings(
        m,
        rule=RULE_ID,
        title="Saturated activations",
        kinds={"sigmoid", "tanh", "hardsigmoid", "hardtanh", "lstm_gates"},
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
