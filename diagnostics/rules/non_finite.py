"""non_finite: a NaN/Inf in the loss, activations or gradients, and where it first appears."""

from __future__ import annotations

import math

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements
from .common import REFS

RULE_ID = "non_finite"

_ADVICE = {
    "input": Remediation(
        action="clean_inputs",
        detail="The batch itself holds NaN/Inf: filter or impute those samples before training.",
        snippet="assert torch.isfinite(x).all(), 'non-finite inputs'",
    ),
    "weights": Remediation(
        action="reload_weights",
        detail="The weights already hold NaN/Inf: restore the last good checkpoint and lower the learning rate.",
        references=[REFS["pascanu2013"]],
    ),
    "forward": Remediation(
        action="guard_op",
        detail="An op produced NaN/Inf from finite inputs (log/sqrt/div of 0 or negatives, exp overflow): "
        "clamp its input or add an epsilon.",
        snippet="y = torch.log(x.clamp_min(1e-12))  # or torch.sqrt(x + 1e-12), x / (d + 1e-12)",
    ),
    "backward": Remediation(
        action="clip_gradients",
        detail="The forward is finite but the backward overflows: clip the gradient norm and check ops "
        "with unbounded derivatives (sqrt near 0, pow with negative exponents).",
        snippet="torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)",
        references=[REFS["pascanu2013"]],
    ),
}


def evaluate(m: Measurements) -> list[Finding]:
    """Fire (critical) on any non-finite loss or gradient, naming the first place it appears."""
    bad_layers = [layer.name for layer in m.layers if layer.nonfinite]
    loss_bad = not math.isfinite(m.loss)
    origin = m.nonfinite_origin
    if origin is None and not bad_layers and not loss_bad:
        return []
    phase = origin.phase if origin else ("backward" if bad_layers else "forward")
    where = origin.layer if origin and origin.layer else (bad_layers[-1] if bad_layers else "")
    op = origin.op if origin else ""
    message = f"Non-finite values ({phase}): {origin.detail if origin else 'NaN/Inf in the gradients'}"
    if where:
        message += f"; first at {where}" + (f" ({op})" if op else "")
    message += f". {len(bad_layers)} layer(s) have NaN/Inf gradients; loss = {m.loss}."
    return [
        Finding(
            rule=RULE_ID,
            severity="critical",
            title="NaN/Inf in the training step",
            message=message,
            layers=[where] if where else bad_layers[:5],
            evidence={
                "phase": phase,
                "op": op,
                "loss": m.loss if math.isfinite(m.loss) else str(m.loss),
                "layers_with_nonfinite_grad": len(bad_layers),
                "nonfinite_grad_elements": sum(layer.nonfinite for layer in m.layers),
            },
            thresholds={"nonfinite_elements": 0},
            remediation=[_ADVICE.get(phase, _ADVICE["backward"])],
            confidence=0.99 if origin else 0.8,
        )
    ]
