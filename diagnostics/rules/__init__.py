"""The checkpoint rules: each module reads Measurements and returns findings."""

from __future__ import annotations

from gradhealth.report import Finding

from ..measurements import Measurements
from ..report_builder import rank
from . import (
    batch_size_wasteful,
    causes,
    dead_relu,
    exploding_gradient,
    fp16_underflow,
    input_not_normalized,
    lr_too_high,
    noisy_layer,
    non_finite,
    poor_initialization,
    saturated_activation,
    unscaled_targets,
    unused_parameters,
    update_ratio,
    vanishing_gradient,
)

RULES = (
    non_finite,
    unscaled_targets,  # a root cause: before the symptoms it explains
    vanishing_gradient,
    exploding_gradient,
    dead_relu,
    saturated_activation,
    unused_parameters,
    input_not_normalized,
    lr_too_high,
    update_ratio,
    fp16_underflow,
    poor_initialization,
    batch_size_wasteful,
    noisy_layer,
)
RULE_IDS = tuple(rule.RULE_ID for rule in RULES)


def evaluate_rules(m: Measurements) -> list[Finding]:
    """Run every rule; worst findings first, a root cause before its symptoms. With NaN gradients the rest is moot."""
    findings = non_finite.evaluate(m)
    if not findings:
        for rule in RULES[1:]:
            findings.extend(rule.evaluate(m))
        causes.attribute(findings)
    return rank(findings)
