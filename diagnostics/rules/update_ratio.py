"""update_ratio: the optimizer's first step is far from ~1e-3 of the weights."""

from __future__ import annotations

import statistics

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements
from .common import REFS, fmt, label_span

RULE_ID = "update_ratio"

# CS231n's rule of thumb is update/weight ~ 1e-3. DeepDiagnosis flags lr*||g||/||W|| outside
# [1e-5, 1e-1]; TheDeepChecker flags log10 > -1 (too fast) and < -4 (too slow). We warn outside
# [1e-5, 1e-1] and call a step that rewrites the weights (ratio >= 1) an error.
TARGET = 1e-3
TOO_FAST = 1e-1
DIVERGING = 1.0
TOO_SLOW = 1e-5


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when the median weight matrix would move by >10% or <0.001% in one step."""
    opt = m.options.optimizer
    if opt is None:
        return []
    ratios = [
        (layer, layer.update_to_weight) for layer in m.layers_with_grad() if layer.fan_in and layer.update_to_weight
    ]
    if not ratios:
        return []
    median = statistics.median(r for _, r in ratios if r is not None)
    if TOO_SLOW <= median <= TOO_FAST:
        return []
    fast = median > TOO_FAST
    flagged = [layer.name for layer, r in ratios if r is not None and (r > TOO_FAST if fast else r < TOO_SLOW)]
    suggested = float(f"{opt.lr * TARGET / median:.2g}")
    return [
        Finding(
            rule=RULE_ID,
            severity="error" if median >= DIVERGING else "warning",
            title="Update size far from 1e-3 of the weights",
            message=f"With {opt.name} lr={fmt(opt.lr)} the first step changes the weights by a median "
            f"{fmt(median)} of their norm ({'too fast' if fast else 'too slow'}; ~1e-3 is typical) in {label_span(flagged)}. "
            f"lr≈{fmt(suggested)} would give 1e-3.",
            layers=flagged,
            evidence={
                "median_update_to_weight": median,
                "lr": opt.lr,
                **{f"ratio:{layer.name}": r for layer, r in ratios[:20]},
            },
            thresholds={"too_fast": TOO_FAST, "too_slow": TOO_SLOW, "diverging": DIVERGING, "target": TARGET},
            remediation=[
                Remediation(
                    action="scale_lr",
                    detail=f"Scale the learning rate toward lr≈{fmt(suggested)} (update/weight ≈ 1e-3), then tune around it.",
                    snippet=f"for group in optimizer.param_groups:\n    group['lr'] = {suggested}",
                    references=[REFS["cs231n"]],
                    params={"lr": suggested},
                )
            ],
            confidence=0.8,
        )
    ]
