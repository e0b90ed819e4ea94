"""dead_relu: ReLU units that are inactive for every sample of the batch pass no gradient."""

from __future__ import annotations

from gradhealth.report import Finding, Remediation

from ..measurements import ActivationMeasure, LayerMeasure, Measurements
from .activation_rule import fraction_findings
from .advice import initialisable, reinit_remediation
from .common import REFS, fmt, span

RULE_ID = "dead_relu"

# SageMaker Debugger fires when > 50% of a layer's units are dead; AUTOTRAINER at 70%. A unit that
# is inactive on all of >= 16 samples is dead with near certainty (a healthy unit active half the
# time is silent on 16 samples with p = 2^-16). A layer that is 90% dead has lost its capacity.
WARNING_FRACTION = 0.5
ERROR_FRACTION = 0.9
# A feeding layer's bias "holds units dead" when its mean is below -0.1: PyTorch's default bias is
# uniform in ±1/sqrt(fan_in) (mean ~0), and Kaiming-initialised layers start at 0.
NEGATIVE_BIAS = -0.1


def _feeders(m: Measurements, flagged: list[ActivationMeasure]) -> list[LayerMeasure]:
    """The Linear/conv layers whose weights and bias set the dead units' inputs."""
    by_name = {layer.name: layer for layer in m.layers}
    named = dict.fromkeys(a.feeding_layer for a in flagged if a.feeding_layer in by_name)
    return [by_name[name] for name in named if name is not None and initialisable(by_name[name])]


def _remediation(m: Measurements, flagged: list[ActivationMeasure]) -> list[Remediation]:
    """A negative bias holding the units dead is fixed first; otherwise re-draw the feeders."""
    feeders = _feeders(m, flagged)
    negative = [layer for layer in feeders if layer.bias_mean is not None and layer.bias_mean < NEGATIVE_BIAS]
    leaky = Remediation(
        action="use_leaky_activation",
        detail="Replace ReLU with LeakyReLU or GELU in the model's code so inactive units still pass a gradient "
        "(weaker than removing what holds them dead).",
        snippet="nn.LeakyReLU(negative_slope=0.01)  # or nn.GELU()",
        references=[REFS["maas2013"]],
        params={"activation": "leaky_relu", "negative_slope": 0.01},
    )
    norm = Remediation(
        action="add_normalization",
        detail="Normalise the pre-activations (BatchNorm/LayerNorm, a change to the model's code) so they stay "
        "centred around zero.",
        references=[REFS["ioffe2015"]],
    )
    if negative:
        names = [layer.name for layer in negative]
        means = ", ".join(f"{layer.name} {fmt(layer.bias_mean)}" for layer in negative[:4])
        fix = Remediation(
            action="fix_bias_and_init",
            detail=f"The biases of {span(names)} are far negative (mean {means}) and hold the units below zero "
            "for every input: reset them to 0 (weights unchanged).",
            snippet=f"with torch.no_grad():\n    for name in {names[:12]!r}:\n"
            "        model.get_submodule(name).bias.zero_()",
            references=[REFS["he2015"], REFS["lu2019"]],
            params={"layers": names, "bias": 0.0},
        )
        return [fix, leaky, norm]
    if not feeders:
        return [leaky, norm]
    names = [layer.name for layer in feeders]
    redraw = reinit_remediation(
        "fix_bias_and_init",
        f"Re-initialise {span(names)} (Kaiming-normal, bias 0) and lower the learning rate: a big update "
        "or a bad init kills units.",
        names,
        "relu",
    )
    return [redraw, leaky, norm]


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
        remediation=lambda flagged: _remediation(m, flagged),
    )
