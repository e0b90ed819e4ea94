"""vanishing_gradient: the back-propagated gradient dies out toward the input, or back in time."""

from __future__ import annotations

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements, RecurrentMeasure
from .common import REFS, batch_confidence, fmt, label_span, layer_label, orders_of_magnitude
from .gradient_profile import Profile, depth_profiles

RULE_ID = "vanishing_gradient"

# AUTOTRAINER (Zhang et al., ICSE 2021) flags first/last gradient ratios below 1e-3. A healthy
# network keeps the back-propagated signal within about one order of magnitude across depth
# (Glorot & Bengio 2010; our healthy zoo stays within 10x), so 100x is already a warning.
WARNING_RATIO = 1e-2
ERROR_RATIO = 1e-3

_SATURATING = {"sigmoid", "tanh", "hardsigmoid", "hardtanh"}


def _where(profile: Profile) -> tuple[str, dict[str, float | str | list[str]]]:
    """In a trunk, the block where the profile breaks: the one that passes back the least gradient."""
    if profile.trunk is None:
        return "", {}
    k = profile.break_at(growing=False)
    if k is None:
        return profile.spread_sentence(), {"trunk": profile.trunk, "blocks": list(profile.names)}
    gain = profile.gains()[k - 1]
    sentence = (
        f" The profile breaks at {profile.describe(k)}: it passes back only 10^-{orders_of_magnitude(gain):.1f} "
        f"of the gradient ({fmt(profile.values[k])} at its output, {fmt(profile.values[k - 1])} at its input)."
    )
    return sentence, {
        "trunk": profile.trunk,
        "block": profile.label(k),
        "block_gain": gain,
        "blocks": list(profile.names),
    }


def _remediation(kinds: set[str]) -> list[Remediation]:
    """ReLU + Kaiming, normalisation or residuals; first, replacing saturating activations if present."""
    remediation = [
        Remediation(
            action="use_relu_and_kaiming_init",
            detail="Use ReLU-family activations with Kaiming-normal init so each layer keeps the gradient scale.",
            snippet="for m in model.modules():\n    if isinstance(m, (nn.Linear, nn.Conv2d)):\n"
            "        nn.init.kaiming_normal_(m.weight, nonlinearity='relu'); nn.init.zeros_(m.bias)",
            references=[REFS["he2015"], REFS["glorot2010"]],
            params={"init": "kaiming_normal", "activation": "relu"},
        ),
        Remediation(
            action="add_normalization_or_residuals",
            detail="Add BatchNorm/LayerNorm between layers, or residual connections, so the gradient has a short path.",
            references=[REFS["ioffe2015"], REFS["ba2016"], REFS["he2016"]],
        ),
    ]
    if kinds & _SATURATING:
        remediation.insert(
            0,
            Remediation(
                action="replace_saturating_activation",
                detail=f"Layers use {', '.join(sorted(kinds & _SATURATING))}: each passes at most 1/4 (sigmoid) of the "
                "gradient and nothing once saturated. If they must stay, use Xavier (Glorot) init.",
                snippet="nn.init.xavier_normal_(layer.weight, gain=nn.init.calculate_gain('tanh'))",
                references=[REFS["glorot2010"]],
                params={"init": "xavier_normal"},
            ),
        )
    return remediation


def _depth_finding(m: Measurements, profiles: list[Profile]) -> Finding | None:
    """Both views must agree: the signal dies out AND the first layers learn far slower.

    The back-propagated signal alone also shrinks when raw, huge inputs inflate the first layers'
    outputs; the relative weight gradient alone misses nothing there but confirms the slow learning.
    """
    if not profiles:
        return None
    ratio = max(p.ratio for p in profiles)
    if ratio >= WARNING_RATIO:
        return None
    profile = profiles[0]
    last = profile.values[-1]
    weak = [profile.label(i) for i, value in enumerate(profile.values) if value < last * WARNING_RATIO]
    where, located = _where(profile)
    remediation = _remediation({layer.next_activation for layer in profile.layers if layer.next_activation is not None})
    scope = f"Across the {len(profile.values)} blocks of {profile.trunk}, the" if profile.trunk else "The"
    return Finding(
        rule=RULE_ID,
        severity="error" if ratio < ERROR_RATIO else "warning",
        title="Vanishing gradient across depth",
        message=f"{scope} back-propagated gradient falls 10^{orders_of_magnitude(ratio):.1f} from "
        f"{profile.describe(-1)} to {profile.describe(0)} ({profile.source} {fmt(last)} -> "
        f"{fmt(profile.values[0])}); {label_span(weak)} barely learn.{where}",
        layers=([str(located["block"])] if "block" in located else []) + [n for n in weak if n != located.get("block")],
        evidence={
            "first_to_last_ratio": ratio,
            **{f"{p.source}_ratio": p.ratio for p in profiles},
            "first_layer_value": profile.values[0],
            "last_layer_value": last,
            "measure": profile.source,
            "profile": [float(v) for v in profile.values],
            **located,
        },
        thresholds={"warning_ratio": WARNING_RATIO, "error_ratio": ERROR_RATIO},
        remediation=remediation,
        confidence=batch_confidence(m.batch_size),
    )


def _time_finding(m: Measurements, rnn: RecurrentMeasure) -> Finding | None:
    steps = rnn.per_step_norm
    peak = max(steps) if steps else 0.0
    if len(steps) < 8 or peak <= 0:
        return None
    ratio = steps[0] / peak
    if ratio >= WARNING_RATIO:
        return None
    return Finding(
        rule=RULE_ID,
        severity="error" if ratio < ERROR_RATIO else "warning",
        title="Vanishing gradient through time",
        message=f"In {layer_label(rnn.name)} ({rnn.op.split('.')[-2] if '.' in rnn.op else rnn.op}) the gradient reaching the first of "
        f"{len(steps)} time steps is 10^{orders_of_magnitude(ratio):.1f} below its peak: early inputs cannot "
        "influence learning.",
        layers=[rnn.name],
        evidence={
            "first_step_to_peak_ratio": ratio,
            "time_steps": len(steps),
            "first_step_norm": steps[0],
            "peak_norm": peak,
        },
        thresholds={"warning_ratio": WARNING_RATIO, "error_ratio": ERROR_RATIO},
        remediation=[
            Remediation(
                action="use_gated_recurrence",
                detail="Use an LSTM or GRU (gates keep a near-constant error flow) or attention over the sequence.",
                snippet="self.rnn = nn.LSTM(input_size, hidden_size, batch_first=True)",
                references=[REFS["hochreiter1997"], REFS["pascanu2013"]],
                params={"layer": "LSTM"},
            ),
            Remediation(
                action="shorten_or_orthogonal_init",
                detail="Shorten the back-propagation window (truncated BPTT) or initialise the recurrent weights orthogonally.",
                snippet="nn.init.orthogonal_(rnn.weight_hh_l0)",
                references=[REFS["pascanu2013"]],
            ),
        ],
        confidence=min(0.9, batch_confidence(m.batch_size)),
    )


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when the gradient at the first layer, block or time step is 100x below the last."""
    findings = [f for f in (_depth_finding(m, views) for views in depth_profiles(m)) if f is not None]
    for rnn in m.recurrent:
        found = _time_finding(m, rnn)
        if found:
            findings.append(found)
    return findings
