"""fp16_underflow: gradient elements that fp16 would flush to zero."""

from __future__ import annotations

import math

from gradhealth.report import Finding, Remediation, Severity

from ..measurements import Measurements
from .common import REFS, fmt, span

RULE_ID = "fp16_underflow"

# Micikevicius et al. 2018 found a large share of gradient values below fp16's 2^-24 without
# loss scaling. We warn when >= 5% of the nonzero gradient elements would flush to zero, and call
# it an error when >= 1% still flush after GradScaler's default 2^16 scale (scaling cannot help).
WARNING_FRACTION = 0.05
SCALED_ERROR_FRACTION = 0.01


# fp16's largest finite value; a scaled gradient element must stay below it.
FP16_MAX = 65504.0
MAX_SCALE = 2.0**24  # GradScaler grows its scale no further in practice


def loss_scale_for(m: Measurements) -> float:
    """The largest power of two with scale x (largest layer gradient norm) x 2 below fp16's max.

    No element exceeds its layer's norm, so this scale cannot overflow, and it lifts the small
    elements as far as that allows (at least 1, at most 2^24).
    """
    norms = [layer.grad_norm for layer in m.layers_with_grad() if layer.grad_norm]
    if not norms:
        return 2.0**16
    exponent = math.floor(math.log2(FP16_MAX / (2.0 * max(norms))))
    return float(min(MAX_SCALE, max(1.0, 2.0**exponent)))


def evaluate(m: Measurements) -> list[Finding]:
    """Fire for fp16 training (info for other precisions) when many gradients flush to zero."""
    layers = m.layers_with_grad()
    nonzero = sum(layer.nonzero_grads for layer in layers)
    if nonzero == 0:
        return []
    flushed = sum(layer.flushed for layer in layers) / nonzero
    flushed_scaled = sum(layer.flushed_scaled for layer in layers) / nonzero
    if flushed < WARNING_FRACTION:
        return []
    fp16 = m.options.precision == "fp16"
    severity: Severity = "info"
    if fp16:
        severity = "error" if flushed_scaled >= SCALED_ERROR_FRACTION else "warning"
    worst = [
        layer.name
        for layer in layers
        if layer.nonzero_grads and layer.flushed / layer.nonzero_grads >= WARNING_FRACTION
    ]
    loss_scale = loss_scale_for(m)
    scale_note = (
        f"{fmt(100 * flushed_scaled)}% still flush with GradScaler's 2^16 scale"
        if flushed_scaled
        else "a 2^16 loss scale (GradScaler's default) recovers them"
    )
    return [
        Finding(
            rule=RULE_ID,
            severity=severity,
            title="Gradients below fp16's range",
            message=f"{fmt(100 * flushed)}% of nonzero gradient elements are below 2^-24 and would flush to zero "
            f"in fp16 ({scale_note}); worst in {span(worst)}."
            + ("" if fp16 else " Training precision is not fp16, so this matters only if you switch to it."),
            layers=worst,
            evidence={
                "flushed_fraction": flushed,
                "flushed_fraction_with_2e16_scale": flushed_scaled,
                "precision": m.options.precision,
            },
            thresholds={"warning_fraction": WARNING_FRACTION, "scaled_error_fraction": SCALED_ERROR_FRACTION},
            remediation=[
                Remediation(
                    action="use_loss_scaling",
                    detail=f"Scale the loss by {loss_scale:g} before backward (GradScaler's init_scale; the largest "
                    "power of two that cannot overflow fp16 with this gradient norm) and unscale before "
                    "clipping or logging.",
                    snippet=f"scaler = torch.amp.GradScaler('cuda', init_scale={loss_scale:g})\n"
                    "scaler.scale(loss).backward()\n"
                    "scaler.unscale_(optimizer); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
                    "scaler.step(optimizer); scaler.update()",
                    references=[REFS["micikevicius2018"]],
                    params={"loss_scale": loss_scale},
                ),
                Remediation(
                    action="use_bf16",
                    detail="bf16 has fp32's exponent range: gradients of this size are representable without scaling.",
                    snippet="with torch.autocast('cuda', dtype=torch.bfloat16): loss = model(x)",
                    params={"precision": "bf16"},
                ),
            ],
            confidence=0.9,
        )
    ]
