"""exploding_gradient: the back-propagated gradient grows by orders of magnitude toward the input."""

from __future__ import annotations

import statistics

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements, RecurrentMeasure
from .common import REFS, batch_confidence, fmt, orders_of_magnitude, span
from .gradient_profile import backprop_profile, weight_profile

RULE_ID = "exploding_gradient"

# AUTOTRAINER (ICSE 2021) flags a first/last gradient ratio above 70; a healthy net stays within
# ~10x (our healthy zoo), so we warn at 100x and call it an error at 1000x.
WARNING_RATIO = 1e2
ERROR_RATIO = 1e3


def suggested_max_norm(m: Measurements) -> float | None:
    """The global norm the model would have if every layer had the median layer's gradient norm."""
    norms = [layer.grad_norm for layer in m.layers_with_grad() if layer.grad_norm]
    if not norms:
        return None
    return float(f"{statistics.median(norms) * len(norms) ** 0.5:.2g}")


def _time_finding(m: Measurements, rnn: RecurrentMeasure) -> Finding | None:
    """The gradient reaching the first time step is 100x the one at the last: it grows back in time."""
    steps = rnn.per_step_norm
    if len(steps) < 8 or steps[-1] <= 0 or steps[0] / steps[-1] <= WARNING_RATIO:
        return None
    ratio = steps[0] / steps[-1]
    max_norm = suggested_max_norm(m)
    return Finding(
        rule=RULE_ID,
        severity="error" if ratio > ERROR_RATIO else "warning",
        title="Exploding gradient through time",
        message=f"In {rnn.name} the gradient reaching the first of {len(steps)} time steps is "
        f"10^{orders_of_magnitude(ratio):.1f} larger than at the last step: the recurrent weights amplify it at every step.",
        layers=[rnn.name],
        evidence={
            "first_to_last_step_ratio": ratio,
            "time_steps": len(steps),
            "first_step_norm": steps[0],
            "last_step_norm": steps[-1],
        },
        thresholds={"warning_ratio": WARNING_RATIO, "error_ratio": ERROR_RATIO},
        remediation=[
            Remediation(
                action="clip_gradients",
                detail=f"Clip the global gradient norm (max_norm≈{fmt(max_norm)}), the standard fix for recurrent nets.",
                snippet=f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={max_norm})",
                references=[REFS["pascanu2013"]],
                params={"max_norm": max_norm},
            ),
            Remediation(
                action="orthogonal_recurrent_init",
                detail="Initialise the recurrent weights orthogonally (spectral radius 1) or use an LSTM/GRU.",
                snippet="nn.init.orthogonal_(rnn.weight_hh_l0)",
                references=[REFS["pascanu2013"], REFS["hochreiter1997"]],
                params={"init": "orthogonal"},
            ),
        ],
        confidence=min(0.9, batch_confidence(m.batch_size)),
    )


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when the first layer's (or first time step's) gradient is 100x the last one's."""
    findings = [f for f in (_time_finding(m, rnn) for rnn in m.recurrent) if f is not None]
    profile = backprop_profile(m) or weight_profile(m)
    if profile is None or profile.ratio <= WARNING_RATIO:
        return findings
    ratio = profile.ratio
    last = profile.values[-1]
    strong = [
        layer.name for layer, value in zip(profile.layers, profile.values, strict=True) if value > last * WARNING_RATIO
    ]
    max_norm = suggested_max_norm(m)
    global_norm = m.global_grad_norm
    return findings + [
        Finding(
            rule=RULE_ID,
            severity="error" if ratio > ERROR_RATIO else "warning",
            title="Exploding gradient across depth",
            message=f"The back-propagated gradient grows 10^{orders_of_magnitude(ratio):.1f} from "
            f"{profile.layers[-1].name} to {profile.layers[0].name} ({profile.source} {fmt(last)} -> "
            f"{fmt(profile.values[0])}); global gradient norm {fmt(global_norm)}.",
            layers=strong,
            evidence={
                "first_to_last_ratio": ratio,
                "global_grad_norm": global_norm,
                "measure": profile.source,
                "profile": [float(v) for v in profile.values],
            },
            thresholds={"warning_ratio": WARNING_RATIO, "error_ratio": ERROR_RATIO},
            remediation=[
                Remediation(
                    action="fix_initialization",
                    detail=f"Layers {span(strong)} amplify the gradient: re-initialise with Kaiming/LeCun "
                    "scaling so each layer preserves variance.",
                    snippet="nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')",
                    references=[REFS["he2015"], REFS["lecun1998"]],
                    params={"init": "kaiming_normal"},
                ),
                Remediation(
                    action="clip_gradients",
                    detail=f"Clip the global gradient norm; max_norm≈{fmt(max_norm)} is the norm this model "
                    "would have if every layer had its median layer's gradient.",
                    snippet=f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={max_norm})",
                    references=[REFS["pascanu2013"]],
                    params={"max_norm": max_norm},
                ),
                Remediation(
                    action="add_normalization",
                    detail="Add normalisation (BatchNorm/LayerNorm, Pre-LN in transformers) or scale residual "
                    "branches down (Fixup).",
                    references=[REFS["ioffe2015"], REFS["xiong2020"], REFS["zhang2019"]],
                ),
            ],
            confidence=batch_confidence(m.batch_size),
        )
    ]
