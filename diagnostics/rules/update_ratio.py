"""update_ratio: the optimizer's first step is far from ~1e-3 of the weights."""

from __future__ import annotations

import statistics

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements
from .common import REFS, fmt, label_span
from .lr_advice import TARGET, TOO_FAST, TOO_SLOW, LrAdvice, advised_lr, ratios, two_digits

RULE_ID = "update_ratio"

# CS231n's rule of thumb is update/weight ~ 1e-3. DeepDiagnosis flags lr*||g||/||W|| outside
# [1e-5, 1e-1]; TheDeepChecker flags log10 > -1 (too fast) and < -4 (too slow). We warn outside
# [1e-5, 1e-1] and call a step that rewrites the weights (ratio >= 1) an error.
DIVERGING = 1.0
# The second lr offered when the lr is raised: BRACKET x the advised one.
BRACKET = 10.0


def _basis(advice: LrAdvice, by_median: bool, opt_lr: float) -> str:
    """How the suggested lr was chosen, for the message."""
    if advice.capped and advice.stable_lr is not None:
        return (
            f"lr≈{fmt(advice.lr)}: the lr giving 1e-3 ({fmt(advice.ratio_lr)}) is above half the stability "
            f"limit the measured curvature sets ({fmt(advice.stable_lr)}), so that limit caps it"
        )
    if by_median:
        return f"lr≈{fmt(advice.lr)} would give the median layer 1e-3"
    if advice.ratio_lr is not None and advice.lr <= opt_lr:
        return (
            "The fastest layer already moves 1e-3 or more: the slow layers lack gradient, not learning rate "
            "(a larger lr would destabilise the others); fix the gradient profile first"
        )
    return f"lr≈{fmt(advice.lr)} would give the fastest layer 1e-3 (the others follow as their gradients recover)"


def _bracket(advice: LrAdvice, fast: bool, opt_lr: float) -> list[Remediation]:
    """Too slow: also the lr giving 10x the target update (1e-2, still inside the healthy band), below stability.

    1e-3 is a rule of thumb, not an optimum; verify measures both and ranks the better one first.
    """
    upper = two_digits(advice.lr * BRACKET)
    if (
        fast
        or advice.lr <= opt_lr
        or (advice.stable_lr is not None and upper > advice.stable_lr)
        or TARGET * BRACKET >= TOO_FAST
    ):
        return []
    return [
        Remediation(
            action="scale_lr",
            detail=f"Or lr≈{fmt(upper)}, {fmt(BRACKET)}x that: an update of ~{fmt(TARGET * BRACKET)} of the weights, "
            "still inside the healthy band; `verify` tries both and ranks the one that trains better first.",
            snippet=f"for group in optimizer.param_groups:\n    group['lr'] = {upper}",
            references=[REFS["cs231n"]],
            params={"lr": upper},
        )
    ]


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when the median weight matrix would move by >10% or <0.001% in one step."""
    opt = m.options.optimizer
    measured = ratios(m)
    advice = advised_lr(m)
    if opt is None or not measured or advice is None:
        return []
    median = statistics.median(r for _, r in measured)
    if TOO_SLOW <= median <= TOO_FAST:
        return []
    fast = median > TOO_FAST
    flagged = [layer.name for layer, r in measured if (r > TOO_FAST if fast else r < TOO_SLOW)]
    suggested = advice.lr
    return [
        Finding(
            rule=RULE_ID,
            severity="error" if median >= DIVERGING else "warning",
            title="Update size far from 1e-3 of the weights",
            message=f"With {opt.name} lr={fmt(opt.lr)} the first step changes the weights by a median "
            f"{fmt(median)} of their norm ({'too fast' if fast else 'too slow'}; ~1e-3 is typical) in {label_span(flagged)}. "
            f"{_basis(advice, fast or opt.name != 'sgd', opt.lr)}.",
            layers=flagged,
            evidence={
                "median_update_to_weight": median,
                "max_update_to_weight": max(r for _, r in measured),
                "lr": opt.lr,
                "stable_lr": advice.stable_lr,
                **{f"ratio:{layer.name}": r for layer, r in measured[:20]},
            },
            thresholds={"too_fast": TOO_FAST, "too_slow": TOO_SLOW, "diverging": DIVERGING, "target": TARGET},
            remediation=[
                Remediation(
                    action="scale_lr",
                    detail=f"Set the learning rate to lr≈{fmt(suggested)}, then tune around it.",
                    snippet=f"for group in optimizer.param_groups:\n    group['lr'] = {suggested}",
                    references=[REFS["cs231n"]],
                    params={"lr": suggested},
                ),
                *_bracket(advice, fast, opt.lr),
            ],
            confidence=0.8,
        )
    ]
