"""non_finite: a NaN/Inf in the loss, activations or gradients, and where it first appears."""

from __future__ import annotations

import math

from gradhealth.report import Finding, Remediation
from gradhealth.report.schema import RemediationParam

from ..measurements import Measurements
from .advice import initialisable, reinit_remediation, sane_max_norm
from .common import REFS, clip_remediation, fmt

RULE_ID = "non_finite"

# Ops whose finite inputs give NaN/Inf at a domain edge: log/sqrt/pow/div of 0 or negatives.
_DOMAIN_OPS = ("log", "sqrt", "rsqrt", "div", "reciprocal", "pow", "acos", "asin", "atanh", "xlogy", "erfinv")


def _op_name(op: str) -> str:
    """'aten.log.default' -> 'log'."""
    parts = op.split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else op


def _forward_advice(where: str, op: str) -> Remediation:
    """Advice for a non-finite value first produced in the forward: specific to the op that produced it."""
    name = _op_name(op)
    params: dict[str, RemediationParam] = {"layer": where, "op": op}
    if any(name.startswith(domain) for domain in _DOMAIN_OPS):
        return Remediation(
            action="guard_op",
            detail=f"{name} at {where or 'the loss'} produced NaN/Inf from finite inputs (0 or negatives at the edge "
            "of its domain): clamp its input or add an epsilon, in the model's code.",
            snippet="y = torch.log(x.clamp_min(1e-12))  # or torch.sqrt(x + 1e-12), x / (d + 1e-12)",
            params=params,
        )
    if name.startswith("softmax") or name.startswith("_softmax"):
        return Remediation(
            action="guard_masked_softmax",
            detail=f"softmax at {where} got a row with every position masked (-inf everywhere gives 0/0 = NaN): "
            "keep at least one position unmasked (e.g. a CLS token), or mask with a large finite negative value.",
            snippet="scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)  # finite, not -inf",
            params=params,
        )
    if name.startswith("exp"):
        return Remediation(
            action="guard_op",
            detail=f"exp at {where} overflowed: subtract the maximum first or use logsumexp/log_softmax.",
            snippet="torch.logsumexp(x, dim=-1)  # instead of torch.log(torch.exp(x).sum(-1))",
            params=params,
        )
    return Remediation(
        action="check_op",
        detail=f"{op or 'an op'} at {where or 'the loss'} produced NaN/Inf from finite inputs: inspect its inputs "
        "(overflowing activations, an uninitialised buffer).",
        params=params,
    )


def _advice(m: Measurements, phase: str, where: str, op: str) -> list[Remediation]:
    """What to do, by the phase and op where the first NaN/Inf appeared."""
    if phase == "input":
        return [
            Remediation(
                action="clean_inputs",
                detail=f"The batch itself holds NaN/Inf ({where}): filter or impute those samples before training.",
                snippet="assert torch.isfinite(x).all(), 'non-finite inputs'",
                params={"input": where},
            )
        ]
    if phase == "weights":
        layer = next((candidate for candidate in m.layers if candidate.name == where), None)
        reload = Remediation(
            action="reload_weights",
            detail=f"{where} already holds NaN/Inf: restore the last good checkpoint and lower the learning rate.",
            references=[REFS["pascanu2013"]],
            params={"layers": [where]},
        )
        if layer is None or not initialisable(layer):
            return [reload]
        redraw = reinit_remediation(
            "reinitialize",
            f"Without a good checkpoint, re-draw {where} (Kaiming/LeCun scale for what follows it): the rest of "
            "the model keeps its weights.",
            [where],
            layer.next_activation,
        )
        return [reload, redraw]
    if phase == "forward":
        return [_forward_advice(where, op)]
    max_norm = sane_max_norm(m)
    shown = max_norm if max_norm is not None else 1.0
    return [
        clip_remediation(
            shown,
            f"The forward is finite but the backward overflows: clip the gradient norm at {fmt(shown)} (the norm "
            "the finite layers give at a sane scale) and check ops with unbounded derivatives (sqrt near 0, pow "
            "with negative exponents).",
        )
    ]


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
            remediation=_advice(m, phase, where, op),
            confidence=0.99 if origin else 0.8,
        )
    ]
