"""input_not_normalized: inputs far from zero mean and unit scale."""

from __future__ import annotations

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements
from .common import REFS, fmt

RULE_ID = "input_not_normalized"

# Standardised inputs have scale max(|mean|, std) ~ 1 and [0, 1] pixels ~ 0.5. SageMaker's
# CheckInputImages flags |mean| > 0.2 and UMLAUT values outside [-1, 1], which would flag
# standardised Gaussian data; we use moments with a 5x margin (warning) and 50x (error: raw 0-255
# pixels have scale ~100). Below 1e-2 the first layer's pre-activations are ~100x too small.
WARNING_SCALE = 5.0
ERROR_SCALE = 50.0
TINY_SCALE = 1e-2


def evaluate(m: Measurements) -> list[Finding]:
    """Fire per input whose mean or spread is far from the standardised range."""
    findings = []
    first_layer = [m.layers[0].name] if m.layers else []
    for x in m.inputs:
        scale = max(abs(x.mean), x.std)
        too_big = scale > WARNING_SCALE
        too_small = 0 < scale < TINY_SCALE
        if not (too_big or too_small):
            continue
        channel_note = ""
        if x.channel_means:
            channel_note = " Per-channel means: " + ", ".join(fmt(c) for c in x.channel_means[:8]) + "."
        snippet = (
            f"mean = x.mean(dim={(0, 2, 3) if x.channel_means else 0}, keepdim=True); "
            f"std = x.std(dim={(0, 2, 3) if x.channel_means else 0}, keepdim=True)\nx = (x - mean) / (std + 1e-8)"
        )
        if too_big and 100 < x.max <= 255.5 and x.min >= 0:
            snippet = "x = x / 255.0  # then standardise per channel\n" + snippet
        findings.append(
            Finding(
                rule=RULE_ID,
                severity="error" if scale > ERROR_SCALE else "warning",
                title="Inputs are not normalised",
                message=f"Input {x.index} has mean {fmt(x.mean)}, std {fmt(x.std)}, range [{fmt(x.min)}, {fmt(x.max)}]: "
                f"{'far larger' if too_big else 'far smaller'} than the unit scale the layers' init assumes.{channel_note}",
                layers=first_layer,
                evidence={"input": x.index, "mean": x.mean, "std": x.std, "min": x.min, "max": x.max, "scale": scale},
                thresholds={"warning_scale": WARNING_SCALE, "error_scale": ERROR_SCALE, "tiny_scale": TINY_SCALE},
                remediation=[
                    Remediation(
                        action="standardize_inputs",
                        detail="Standardise each input feature/channel to zero mean and unit variance with "
                        "statistics from the training set.",
                        snippet=snippet,
                        references=[REFS["lecun1998"]],
                        params={"mean": x.mean, "std": x.std},
                    )
                ],
                confidence=0.9,
            )
        )
    return findings
