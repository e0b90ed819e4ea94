"""exploding_gradient: the back-propagated gradient grows by orders of magnitude toward the input."""

from __future__ import annotations

import statistics

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements, RecurrentMeasure
from .common import REFS, batch_confidence, clip_remediation, fmt, label_span, layer_label, orders_of_magnitude
from .gradient_profile import Profile, depth_profiles

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
        message=f"In {layer_label(rnn.name)} the gradient reaching the first of {len(steps)} time steps is "
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
            clip_remediation(
                max_norm,
                f"Clip the global gradient norm (max_norm≈{fmt(max_norm)}), the standard fix for recurrent nets.",
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


def _where(profile: Profile) -> tuple[str, list[str], dict[str, float | str | list[str]]]:
    """Sentence, flagged names and evidence locating the growth: the breaking block in a trunk."""
    last = profile.values[-1]
    strong = [profile.label(i) for i, value in enumerate(profile.values) if value > last * WARNING_RATIO]
    if profile.trunk is None:
        return "", strong, {}
    k = profile.break_at(growing=True)
    if k is None:
        return profile.spread_sentence(), strong, {"trunk": profile.trunk, "blocks": list(profile.names)}
    gain = profile.gains()[k - 1]
    sentence = (
        f" The profile breaks at {profile.describe(k)}: it multiplies the gradient 10^{orders_of_magnitude(gain):.1f} "
        f"on its way back ({fmt(profile.values[k])} at its output, {fmt(profile.values[k - 1])} at its input), so the "
        f"blocks after it get that much less gradient than the blocks before it."
    )
    evidence: dict[str, float | str | list[str]] = {
        "trunk": profile.trunk,
        "block": profile.label(k),
        "block_gain": gain,
        "blocks": list(profile.names),
    }
    return sentence, [profile.label(k)] + [name for name in strong if name != profile.label(k)], evidence


def _depth_finding(m: Measurements, profile: Profile) -> Finding | None:
    """One finding per profile whose first value is 100x its last."""
    if profile.ratio <= WARNING_RATIO:
        return None
    ratio = profile.ratio
    last = profile.values[-1]
    where, flagged, located = _where(profile)
    scope = f"Across the {len(profile.values)} blocks of {profile.trunk}, the" if profile.trunk else "The"
    max_norm = suggested_max_norm(m)
    global_norm = m.global_grad_norm
    return Finding(
        rule=RULE_ID,
        severity="error" if ratio > ERROR_RATIO else "warning",
        title="Exploding gradient across depth",
        message=f"{scope} back-propagated gradient grows 10^{orders_of_magnitude(ratio):.1f} from "
        f"{profile.describe(-1)} to {profile.describe(0)} ({profile.source} {fmt(last)} -> "
        f"{fmt(profile.values[0])}); global gradient norm {fmt(global_norm)}.{where}",
        layers=flagged,
        evidence={
            "first_to_last_ratio": ratio,
            "global_grad_norm": global_norm,
            "measure": profile.source,
            "profile": [float(v) for v in profile.values],
            **located,
        },
        thresholds={"warning_ratio": WARNING_RATIO, "error_ratio": ERROR_RATIO},
        remediation=_remediation(label_span(flagged), max_norm),
        confidence=batch_confidence(m.batch_size),
    )


def _remediation(where: str, max_norm: float | None) -> list[Remediation]:
    """Re-initialise what amplifies, clip, normalise."""
    return [
        Remediation(
            action="fix_initialization",
            detail=f"{where} amplify the gradient: re-initialise with Kaiming/LeCun "
            "scaling so each layer preserves variance.",
            snippet="nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')",
            references=[REFS["he2015"], REFS["lecun1998"]],
            params={"init": "kaiming_normal"},
        ),
        clip_remediation(
            max_norm,
            f"Clip the global gradient norm; max_norm≈{fmt(max_norm)} is the norm this model "
            "would have if every layer had its median layer's gradient.",
        ),
        Remediation(
            action="add_normalization",
            detail="Add normalisation (BatchNorm/LayerNorm, Pre-LN in transformers) or scale residual "
            "branches down (Fixup).",
            references=[REFS["ioffe2015"], REFS["xiong2020"], REFS["zhang2019"]],
        ),
    ]


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when the first layer's (first block's, first time step's) gradient is 100x the last one's."""
    findings = [f for f in (_time_finding(m, rnn) for rnn in m.recurrent) if f is not None]
    for views in depth_profiles(m):
        found = _depth_finding(m, views[0])
        if found is not None:
            findings.append(found)
    return findings
