"""One learning-rate answer per report: the update-size target, never above the measured stability limit.

lr_too_high and update_ratio both advise an lr. Each used to compute its own (half the curvature
limit; lr x 1e-3 / median update ratio), so one report could say 0.083 and 0.023, or 170 while its
own lambda_max put the stable lr below 1.5. Both now read ``advised_lr``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..curvature import adam_stability_limit, stability_limit
from ..measurements import LayerMeasure, Measurements

# Suggest half the curvature limit: a margin for the sharpening that follows (Cohen et al. 2021).
SAFETY = 0.5
# CS231n's rule of thumb is update/weight ~ 1e-3. DeepDiagnosis flags lr*||g||/||W|| outside
# [1e-5, 1e-1]; TheDeepChecker flags log10 > -1 (too fast) and < -4 (too slow).
TARGET = 1e-3
TOO_FAST = 1e-1
TOO_SLOW = 1e-5


@dataclass(frozen=True)
class LrAdvice:
    """The report's lr, and which constraint set it."""

    lr: float
    stable_lr: float | None  # SAFETY x the curvature limit, when the curvature check measured it
    ratio_lr: float | None  # the lr that brings the update ratio to TARGET, when update_ratio fires
    capped: bool  # the update-ratio target was above the stable lr and was lowered to it


def ratios(m: Measurements) -> list[tuple[LayerMeasure, float]]:
    """Per weight layer, the first step's update/weight ratio."""
    return [
        (layer, layer.update_to_weight) for layer in m.layers_with_grad() if layer.fan_in and layer.update_to_weight
    ]


def ratio_lr(m: Measurements) -> float | None:
    """The lr bringing the update ratio to 1e-3, or None when the median ratio is in range.

    Too slow: scale so the fastest layer moves 1e-3, not the median, and never lower the lr. In a
    vanishing net the median layer is starved; scaling the lr for it would push the healthy layers
    (and the sharpest direction) far past stability, and when the fastest layer already moves 1e-3
    the slow ones lack gradient, not lr. Too fast, or Adam (whose step does not scale with the
    gradient): scale so the median moves 1e-3.
    """
    opt = m.options.optimizer
    values = [r for _, r in ratios(m)]
    if opt is None or not values:
        return None
    median = statistics.median(values)
    if TOO_SLOW <= median <= TOO_FAST:
        return None
    if median > TOO_FAST or opt.name in ("adam", "adamw"):
        return opt.lr * TARGET / median  # Adam's step ignores the gradient's scale: no layer is starved
    return max(opt.lr, opt.lr * TARGET / max(values))


def stable_lr(m: Measurements) -> float | None:
    """Half the largest lr the measured curvature allows for this optimizer (SGD: lambda_max; Adam: P^-1 H)."""
    opt = m.options.optimizer
    if opt is None:
        return None
    if opt.name == "sgd" and m.hessian_max_eigenvalue and m.hessian_max_eigenvalue > 0:
        return SAFETY * stability_limit(1.0, opt.momentum) / m.hessian_max_eigenvalue
    if opt.name in ("adam", "adamw") and m.preconditioned_sharpness and m.preconditioned_sharpness > 0:
        return SAFETY * adam_stability_limit(1.0, opt.betas[0]) / m.preconditioned_sharpness
    return None


def two_digits(value: float) -> float:
    """The lr as the report quotes it: two significant digits."""
    return float(f"{value:.2g}")


def advised_lr(m: Measurements) -> LrAdvice | None:
    """The one lr both rules quote: the update-ratio target capped at the stable lr, else whichever exists."""
    stable, target = stable_lr(m), ratio_lr(m)
    candidates = [v for v in (stable, target) if v is not None]
    if not candidates:
        return None
    lr = min(candidates)
    capped = stable is not None and target is not None and target > stable
    return LrAdvice(two_digits(lr), stable, target, capped)
