"""Root causes and their symptoms within one report: ``Finding.caused_by`` and what the message says."""

from __future__ import annotations

from gradhealth.report import Finding

from .lr_advice import TOO_SLOW

# cause -> the findings it explains when both fire. Raw targets inflate every gradient
# (unscaled_targets); raw inputs inflate the first layers' outputs, saturate what follows and shrink
# the back-propagated signal (input_not_normalized, only when too big); an off-scale init makes the
# signal grow or die out across depth (poor_initialization); a starved layer moves too little
# (vanishing_gradient -> a too-slow update_ratio); dead units pass exactly zero gradient (dead_relu).
SYMPTOMS: dict[str, tuple[str, ...]] = {
    "unscaled_targets": ("update_ratio", "exploding_gradient", "lr_too_high"),
    "input_not_normalized": (
        "saturated_activation",
        "vanishing_gradient",
        "exploding_gradient",
        "update_ratio",
        "lr_too_high",
    ),
    "poor_initialization": ("vanishing_gradient", "exploding_gradient", "saturated_activation"),
    "vanishing_gradient": ("update_ratio",),
    "dead_relu": ("unused_parameters",),
}

_NAMES = {
    "unscaled_targets": "the regression targets are not standardised",
    "input_not_normalized": "the inputs are far larger than unit scale",
    "poor_initialization": "the weights are initialised off the variance-preserving scale",
    "vanishing_gradient": "the gradient vanishes before it reaches these layers",
    "dead_relu": "dead ReLU units pass no gradient",
}


def _explains(cause: Finding, symptom: Finding) -> bool:
    """Whether this cause finding can explain this symptom finding (beyond the rule pairing)."""
    if cause.rule == "input_not_normalized":
        scale = cause.evidence.get("scale")
        return isinstance(scale, float | int) and scale > 1.0  # too big, not too small
    if cause.rule == "vanishing_gradient" and symptom.rule == "update_ratio":
        median = symptom.evidence.get("median_update_to_weight")
        return isinstance(median, float) and median < TOO_SLOW
    if cause.rule == "dead_relu":
        return symptom.evidence.get("explained_by_dead_units") is True
    return True


def attribute(findings: list[Finding]) -> None:
    """Mark symptoms with caused_by, and say in their message which root cause to fix first."""
    for cause in findings:
        for symptom in findings:
            if symptom is cause or symptom.rule not in SYMPTOMS.get(cause.rule, ()):
                continue
            if cause.rule in symptom.caused_by or symptom.rule in cause.caused_by or not _explains(cause, symptom):
                continue
            symptom.caused_by.append(cause.rule)
            symptom.message += f" Root cause: {_NAMES[cause.rule]} ({cause.rule}); fix that first, then re-check this."
