"""dead_relu: ReLU units that are inactive for every sample of the batch pass no gradient."""

from __future__ import annotations

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements
from .activation_rule import fraction_findings
from .common import REFS

RULE_ID = "dead_relu"

# SageMaker Debugger fires when > 50% of a layer's units are dead; AUTOTRAINER at 70%. A unit that
# is inactive on all of >= 16 samples is dead with near certainty (a healthy unit active half the
# time is silent on 16 samples with p = 2^-16). A layer that is 90% dead has lost its capacity.
WARNING_FRACTION = 0.5
ERROR_FRACTION = 0.9


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when at least half of a ReLU's units never activate on the batch."""
    return fraction_findings(
        m,
        rule=RULE_ID,
        title="Dead ReLU units",
        kinds={"relu", "relu6"},
        value=lambda a: a.dead,
        warning=WARNING_FRACTION,
        error=ERROR_FRACTION,
        describe="Units never active on this batch (no gradient flows through them)",
        remediation=[
            Remediation(
                action="use_leaky_activation",
                detail="Replace ReLU with LeakyReLU or GELU so inactive units still pass a gradient.",
                snippet="nn.LeakyReLU(negative_slope=0.01)  # or nn.GELU()",
                references=[REFS["maas2013"]],
                params={"activation": "leaky_relu", "negative_slope": 0.01},
            ),
            Remediation(
                action="fix_bias_and_init",
                detail="Re-initialise the preceding layer (Kaiming-normal, bias 0 or a small positive value) "
                "and lower the learning rate: large negative biases or a big update kill units.",
                snippet="nn.init.kaiming_normal_(layer.weight, nonlinearity='relu'); nn.init.zeros_(layer.bias)",
                references=[REFS["he2015"], REFS["lu2019"]],
                params={"init": "kaiming_normal", "bias": 0.0},
            ),
            Remediation(
                action="add_normalization",
                detail="Normalise the pre-activations (BatchNorm/LayerNorm) so they stay centred around zero.",
                references=[REFS["ioffe2015"]],
            ),
        ],
    )
