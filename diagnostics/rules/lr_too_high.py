"""lr_too_high: the learning rate exceeds the stability limit set by the loss curvature."""

from __future__ import annotations

from gradhealth.report import Finding, Remediation

from ..curvature import stability_limit
from ..measurements import Measurements
from .common import REFS, fmt

RULE_ID = "lr_too_high"

# Gradient descent with momentum beta is stable on a quadratic only while lambda_max * lr <
# 2(1 + beta) (Cohen et al. 2021). Just above it training "catapults" (loss spikes, then sharpness
# drops) and can recover; beyond about twice the limit it diverges (Lewkowycz et al. 2020).
ERROR_FACTOR = 2.0
# Suggest half the limit: a margin for the sharpening that follows (Cohen et al. 2021).
SAFETY = 0.5


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when lambda_max * lr exceeds 2(1+beta) for SGD; Adam needs the preconditioned Hessian."""
    opt = m.options.optimizer
    sharpness = m.hessian_max_eigenvalue
    if opt is None or sharpness is None or opt.name != "sgd" or sharpness <= 0:
        return []
    limit = stability_limit(opt.lr, opt.momentum)  # the largest stable sharpness
    if sharpness <= limit:
        return []
    product = sharpness * opt.lr
    suggested = float(f"{SAFETY * 2 * (1 + opt.momentum) / sharpness:.2g}")
    return [
        Finding(
            rule=RULE_ID,
            severity="error" if sharpness > ERROR_FACTOR * limit else "warning",
            title="Learning rate above the curvature's stability limit",
            message=f"Top Hessian eigenvalue {fmt(sharpness)} × lr {fmt(opt.lr)} = {fmt(product)} exceeds "
            f"2(1+β) = {fmt(2 * (1 + opt.momentum))}: gradient descent diverges along the sharpest direction. "
            f"Use lr ≤ {fmt(suggested)}.",
            layers=[],
            evidence={
                "hessian_max_eigenvalue": sharpness,
                "lr": opt.lr,
                "momentum": opt.momentum,
                "lr_times_sharpness": product,
            },
            thresholds={"stability_limit": 2 * (1 + opt.momentum), "error_factor": ERROR_FACTOR},
            remediation=[
                Remediation(
                    action="lower_lr",
                    detail=f"Set lr to about {fmt(suggested)} (half of 2(1+β)/λmax), or warm up from it.",
                    snippet=f"optimizer = torch.optim.SGD(model.parameters(), lr={suggested}, momentum={opt.momentum})",
                    references=[REFS["cohen2021"], REFS["lewkowycz2020"]],
                    params={"lr": suggested},
                )
            ],
            confidence=0.85,
        )
    ]
