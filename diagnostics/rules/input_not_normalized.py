"""input_not_normalized: inputs far from zero mean and unit scale."""

from __future__ import annotations

from gradhealth.report import Finding, Remediation

from ..measurements import InputMeasure, Measurements
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
        remediation = _standardize(x, too_big)
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
                remediation=[remediation],
                confidence=0.9,
            )
        )
    return findings


def _vector(values: list[float]) -> str:
    """A short literal of per-feature constants for the snippet."""
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _standardize(x: InputMeasure, too_big: bool) -> Remediation:
    """Per-feature (x - mean) / std with this batch's statistics as vectors; the snippet and params agree."""
    dim = x.feature_dim if x.feature_dim is not None else 1
    axes = "(0, 2, 3)" if len(x.shape) == 4 else ("(0, 1)" if dim == -1 else "0")
    computed = (
        f"mean = x_train.mean(dim={axes}, keepdim=True); std = x_train.std(dim={axes}, keepdim=True)\n"
        "x = (x - mean) / (std + 1e-8)"
    )
    if x.feature_means is None or x.feature_stds is None:
        return Remediation(
            action="standardize_inputs",
            detail=f"Standardise input {x.index} per feature to zero mean and unit variance with statistics from the "
            "training set (this batch has too many features, or non-finite values, to quote them).",
            snippet=computed,
            references=[REFS["lecun1998"]],
            params={"input": x.index, "dim": dim},
        )
    means = [float(v) for v in x.feature_means]
    stds = [float(v) if v > 0 else 1.0 for v in x.feature_stds]  # a constant feature is only centred
    n = len(means)
    shape = "[1, -1, 1, 1]" if len(x.shape) == 4 else ("[1, 1, -1]" if dim == -1 else "[1, -1]")
    snippet = (
        f"mean = torch.tensor({_vector(means)}).view({shape})\nstd = torch.tensor({_vector(stds)}).view({shape})\n"
        "x = (x - mean) / std  # this batch's per-feature statistics; prefer the training set's:\n# "
        + computed.replace("\n", "; ")
        if n <= 16
        else computed
    )
    if too_big and 100 < x.max <= 255.5 and x.min >= 0:
        snippet = "# raw 0-255 pixels: the per-channel constants below include the /255\n" + snippet
    shown = ", ".join(f"{fmt(mu)}±{fmt(sd)}" for mu, sd in zip(means[:6], stds[:6], strict=True))
    return Remediation(
        action="standardize_inputs",
        detail=f"Standardise input {x.index} per feature (axis {dim}, {n} features) to zero mean and unit variance: "
        f"this batch gives mean±std {shown}{' …' if n > 6 else ''} (params.mean/std hold all {n}); use the "
        "training set's statistics in production.",
        snippet=snippet,
        references=[REFS["lecun1998"]],
        params={"mean": means, "std": stds, "input": x.index, "dim": dim},
    )
