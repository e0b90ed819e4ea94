"""unscaled_targets: regression targets in raw units set the loss's scale, and with it every gradient.

This is a root cause. With MSE on targets ~5000 and outputs ~1 the residual is the target itself,
so dL/d(output) and every layer's gradient are ~5000x what standardised targets give; the symptom
rules then advise a tiny learning rate or clipping. Findings it explains get ``caused_by`` (rules.causes).
"""

from __future__ import annotations

from gradhealth.report import Finding, Remediation
from gradhealth.report.schema import RemediationParam

from ..measurements import Measurements, TargetMeasure
from .common import REFS, fmt
from .input_not_normalized import ERROR_SCALE, WARNING_SCALE

RULE_ID = "unscaled_targets"

# Targets are judged like inputs (input_not_normalized): standardised data has scale max(|mean|, std)
# ~ 1, so WARNING_SCALE (5x) and ERROR_SCALE (50x) apply unchanged. They dominate the loss when the
# model's outputs are WARNING_SCALE times smaller than the targets: the residual is then the target.

_SNIPPET = (
    "mu, sigma = y_train.mean(dim=0), y_train.std(dim=0)\n"
    "loss = F.mse_loss(model(x), (y - mu) / sigma)   # train on standardised targets\n"
    "prediction = model(x) * sigma + mu             # invert at inference"
)


def _dominates(t: TargetMeasure, loss: float) -> bool:
    """The outputs are far below the targets' scale, so the residual (and the loss) is the targets'."""
    if t.output_rms is not None:
        return t.output_rms * WARNING_SCALE <= t.scale
    residual = loss**0.5 if t.loss_kind == "mse" else loss
    return residual * 2 >= t.scale  # no prediction measured: the loss itself is of the targets' size


def _consequence(t: TargetMeasure) -> str:
    """What the raw scale does to training, per loss kind."""
    if t.loss_kind == "mse":
        return (
            f"MSE's gradient is proportional to the residual, so every layer's gradient is ~{fmt(t.scale)}x "
            "what standardised targets give and a usual learning rate diverges."
        )
    return (
        f"{t.loss_kind} passes back a gradient of at most 1 per element, so the outputs must grow "
        f"~{fmt(t.scale)}x by small steps before the loss can fall: training crawls."
    )


def evaluate(m: Measurements) -> list[Finding]:
    """Fire on regression targets far from standardised that the outputs do not reach."""
    t = m.targets
    if t is None or t.scale <= WARNING_SCALE or not _dominates(t, m.loss):
        return []
    outputs = f"the model's outputs have RMS {fmt(t.output_rms)}" if t.output_rms is not None else "the outputs"
    return [
        Finding(
            rule=RULE_ID,
            severity="error" if t.scale > ERROR_SCALE else "warning",
            title="Regression targets are not standardised",
            message=f"The {t.loss_kind} targets have mean {fmt(t.mean)} and std {fmt(t.std)} while {outputs}: "
            f"the loss ({fmt(m.loss)}) measures the targets' raw scale. {_consequence(t)} "
            "Standardise the targets; findings about the gradient's or the update's size follow from this.",
            evidence={
                "target_mean": t.mean,
                "target_std": t.std,
                "target_scale": t.scale,
                "output_rms": t.output_rms,
                "loss": m.loss,
                "loss_kind": t.loss_kind,
            },
            thresholds={"warning_scale": WARNING_SCALE, "error_scale": ERROR_SCALE, "output_margin": WARNING_SCALE},
            remediation=[
                Remediation(
                    action="standardize_targets",
                    detail=f"Train on (y - {fmt(t.mean)}) / {fmt(t.std)} (statistics of the training targets) "
                    "and map predictions back with * std + mean at inference.",
                    snippet=_SNIPPET,
                    references=[REFS["lecun1998"]],
                    params=_params(t),
                )
            ],
            confidence=0.9,
        )
    ]


def _params(t: TargetMeasure) -> dict[str, RemediationParam]:
    """Per-column mean/std vectors (docs/verify.md), the whole-target ones when columns were not measured."""
    means = t.column_means if t.column_means is not None else [t.mean]
    stds = t.column_stds if t.column_stds is not None else [t.std]
    return {"mean": [float(v) for v in means], "std": [float(v) if v > 0 else 1.0 for v in stds]}
