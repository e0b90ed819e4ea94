"""lr_too_high: the learning rate exceeds the stability limit set by the loss curvature."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradhealth.report import Finding, Remediation

from ..curvature import adam_stability_limit, stability_limit
from ..measurements import Measurements
from ..options import OptimizerSpec
from .common import REFS, fmt
from .lr_advice import SAFETY, LrAdvice, advised_lr, two_digits

RULE_ID = "lr_too_high"
COHEN2022 = "Cohen et al. 2022, Adaptive Gradient Methods at the Edge of Stability"

# Gradient descent with momentum beta is stable on a quadratic only while lambda_max * lr <
# 2(1 + beta) (Cohen et al. 2021). Just above it training "catapults" (loss spikes, then sharpness
# drops) and can recover; beyond about twice the limit it diverges (Lewkowycz et al. 2020).
# Adam's step is lr * m / P, so the same argument applies to the top eigenvalue of P^-1 H with the
# EMA momentum's limit (2 + 2 beta1) / (1 - beta1) (Cohen et al. 2022).
ERROR_FACTOR = 2.0
# When the estimate's interval straddles the limit, the verdict is only as sure as the estimate:
# the confidence is scaled down and the message says the limit lies inside the interval.
STRADDLE_CONFIDENCE = 0.5


@dataclass(frozen=True)
class _Regime:
    """The sharpness an optimizer is sensitive to, and its stable bound on lr * sharpness."""

    sharpness: float
    bound: float  # lr * sharpness must stay below this
    label: str  # how the message names the sharpness
    bound_text: str  # how the message names the bound
    references: list[str]
    low: float  # the estimate's interval (value, value when none)
    high: float  # inf when the estimate gives no upper end
    method: str = ""


def _interval(m: Measurements, key: str, value: float) -> tuple[float, float, str]:
    """The estimate's interval from the curvature check, or the bare value when it gave none."""
    e = None if m.curvature is None else m.curvature.estimates.get(key)
    if e is None or e.low is None:
        return value, value, ""
    return min(e.low, value), math.inf if e.high is None else max(e.high, value), e.method


def _regime(m: Measurements, opt: OptimizerSpec) -> _Regime | None:
    """SGD reads the Hessian; Adam/AdamW read the preconditioned Hessian P^-1 H."""
    if opt.name == "sgd" and m.hessian_max_eigenvalue is not None:
        value = m.hessian_max_eigenvalue
        return _Regime(
            value,
            stability_limit(1.0, opt.momentum),
            "Top Hessian eigenvalue",
            "2(1+β)",
            [REFS["cohen2021"], REFS["lewkowycz2020"]],
            *_interval(m, "hessian_max_eigenvalue", value),
        )
    if opt.name in ("adam", "adamw") and m.preconditioned_sharpness is not None:
        value = m.preconditioned_sharpness
        return _Regime(
            value,
            adam_stability_limit(1.0, opt.betas[0]),
            "Top eigenvalue of Adam's preconditioned Hessian P⁻¹H",
            "(2+2β₁)/(1−β₁)",
            [COHEN2022, REFS["cohen2021"]],
            *_interval(m, "preconditioned_sharpness", value),
        )
    return None


def _uncertainty(regime: _Regime, lr: float) -> str:
    """What the message adds about the estimate's interval: that it straddles the limit, when it does."""
    if regime.low == regime.high:
        return ""
    upper = "no upper end" if math.isinf(regime.high) else fmt(regime.high * lr)
    span = f"[{fmt(regime.low * lr)}, {upper}] ({regime.method})"
    if regime.low * lr <= regime.bound:
        return f" The estimate's interval puts lr × sharpness in {span}, which straddles the limit: this may be stable."
    return f" The estimate's interval puts lr × sharpness in {span}, all above the limit."


def _snippet(opt: OptimizerSpec, lr: float) -> str:
    """The optimizer line with the suggested lr."""
    if opt.name == "sgd":
        return f"optimizer = torch.optim.SGD(model.parameters(), lr={lr}, momentum={opt.momentum})"
    name = "Adam" if opt.name == "adam" else "AdamW"
    return f"optimizer = torch.optim.{name}(model.parameters(), lr={lr}, betas={tuple(opt.betas)})"


def _why(advice: LrAdvice | None, bound_text: str) -> str:
    """Which constraint set the lr: half the curvature limit, or the update-size target below it."""
    if advice is not None and advice.stable_lr is not None and advice.lr < two_digits(advice.stable_lr):
        return f"the lr giving updates of 1e-3 of the weights, below half of {bound_text}/sharpness"
    return f"half of {bound_text}/sharpness"


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when lr * sharpness exceeds the optimizer's stability bound."""
    opt = m.options.optimizer
    regime = None if opt is None else _regime(m, opt)
    if opt is None or regime is None or regime.sharpness <= 0:
        return []
    product = regime.sharpness * opt.lr
    if product <= regime.bound:
        return []
    straddles = regime.low * opt.lr <= regime.bound
    advice = advised_lr(m)  # the same lr update_ratio quotes: half the limit, or lower when updates are too big
    suggested = advice.lr if advice is not None else two_digits(SAFETY * regime.bound / regime.sharpness)
    evidence: dict[str, float | int | str | bool | None | list[float] | list[str]] = {
        "lr": opt.lr,
        "lr_times_sharpness": product,
        "sharpness_low": regime.low,
        "sharpness_high": None if math.isinf(regime.high) else regime.high,
        "interval_straddles_limit": straddles,
    }
    if opt.name == "sgd":
        evidence.update(hessian_max_eigenvalue=regime.sharpness, momentum=opt.momentum)
    else:
        evidence.update(preconditioned_sharpness=regime.sharpness, beta1=opt.betas[0])
        if m.hessian_max_eigenvalue is not None:
            evidence["hessian_max_eigenvalue"] = m.hessian_max_eigenvalue
    return [
        Finding(
            rule=RULE_ID,
            severity="error" if product > ERROR_FACTOR * regime.bound else "warning",
            title="Learning rate above the curvature's stability limit",
            message=f"{regime.label} {fmt(regime.sharpness)} × lr {fmt(opt.lr)} = {fmt(product)} exceeds "
            f"{regime.bound_text} = {fmt(regime.bound)}: the optimizer diverges along the sharpest direction. "
            f"Use lr ≤ {fmt(suggested)}.{_uncertainty(regime, opt.lr)}",
            layers=[],
            evidence=evidence,
            thresholds={"stability_limit": regime.bound, "error_factor": ERROR_FACTOR},
            remediation=[
                Remediation(
                    action="lower_lr",
                    detail=f"Set lr to about {fmt(suggested)} ({_why(advice, regime.bound_text)}), or warm up from it.",
                    snippet=_snippet(opt, suggested),
                    references=regime.references,
                    params={"lr": suggested},
                )
            ],
            confidence=(0.85 if opt.name == "sgd" else 0.7) * (STRADDLE_CONFIDENCE if straddles else 1.0),
        )
    ]
