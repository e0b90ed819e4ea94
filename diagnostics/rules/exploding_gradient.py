"""exploding_gradient: the back-propagated gradient grows by orders of magnitude toward the input."""

from __future__ import annotations

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements, RecurrentMeasure
from ..options import DEFAULT_OPTIMIZER
from .advice import (
    clip_detail,
    initialisable,
    off_scale,
    orthogonal_remediation,
    reinit_remediation,
    sane_max_norm,
    std_ratio,
    update_bound_max_norm,
    with_clip,
)
from .common import REFS, batch_confidence, clip_remediation, fmt, label_span, layer_label, orders_of_magnitude, span
from .gradient_profile import Profile, depth_profiles

RULE_ID = "exploding_gradient"

# AUTOTRAINER (ICSE 2021) flags a first/last gradient ratio above 70; a healthy net stays within
# ~10x (our healthy zoo), so we warn at 100x and call it an error at 1000x.
WARNING_RATIO = 1e2
ERROR_RATIO = 1e3
# A layer amplifies when its std is 2x the variance-preserving one or more (4x the variance per layer);
# 25% (poor_initialization's MISMATCH) is a drift, not what makes a gradient explode.
MISMATCH = 2.0


def suggested_max_norm(m: Measurements) -> float | None:
    """The clip norm: the global norm the model would have at a sane scale (advice.sane_max_norm)."""
    return sane_max_norm(m)


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
            orthogonal_remediation(
                "orthogonal_recurrent_init",
                [rnn.name],
                f"Initialise the weights of {rnn.name} orthogonally (spectral radius 1): recurrent weights with "
                "a spectral radius above 1 multiply the gradient at every step back in time.",
            ),
            clip_remediation(max_norm, clip_detail(max_norm) + " The standard guard for recurrent nets."),
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
        remediation=_remediation(m, profile, flagged, max_norm),
        confidence=batch_confidence(m.batch_size),
    )


def _branch_rescale(profile: Profile) -> Remediation | None:
    """In a residual trunk at the right init scale, the sum of branches grows: scale each branch's last layer down."""
    if profile.trunk is None or len(profile.layers) < 2:
        return None
    names = [layer.name for layer in profile.layers if initialisable(layer)]
    if not names:
        return None
    factor = float(f"{len(profile.layers) ** -0.5:.2g}")
    return Remediation(
        action="rescale_weights",
        detail=f"The layers are at the variance-preserving scale, but {len(profile.layers)} residual branches add up "
        f"without normalisation: scale the last layer of each branch by 1/sqrt(blocks) = {fmt(factor)} "
        "(Fixup's branch down-scaling).",
        snippet=f"with torch.no_grad():\n    for name in {names[:12]!r}:\n        model.get_submodule(name).weight.mul_({factor})",
        references=[REFS["zhang2019"], REFS["he2016"]],
        params={"layers": names, "factor": factor},
    )


def _remediation(m: Measurements, profile: Profile, flagged: list[str], max_norm: float | None) -> list[Remediation]:
    """Re-draw the layers that are off scale (only those); else scale residual branches; clip; normalise."""
    off = [layer.name for layer in off_scale(m, MISMATCH) if (std_ratio(layer) or 0.0) > 1.0]  # too big
    activation = next(
        (layer.next_activation for layer in m.layers if layer.name in off and layer.next_activation), None
    )
    remediation: list[Remediation] = []
    if off:
        remediation.append(
            reinit_remediation(
                "fix_initialization",
                f"{label_span(flagged)} amplify the gradient; {span(off)} are off the variance-preserving scale: "
                "re-initialise them with std = gain/sqrt(fan_in) (Kaiming/LeCun).",
                off,
                activation or "relu",
                references=[REFS["he2015"], REFS["lecun1998"]],
            )
        )
    else:
        rescale = _branch_rescale(profile)
        if rescale is not None:
            remediation.append(rescale)
    bound = update_bound_max_norm(m)
    if remediation and bound is not None:  # the weight fix, and a clip that bounds the step while it settles
        lr = (m.options.optimizer or DEFAULT_OPTIMIZER).lr
        remediation.append(with_clip(remediation[0], bound, lr))
    remediation.append(clip_remediation(max_norm, clip_detail(max_norm)))
    remediation.append(
        Remediation(
            action="add_normalization",
            detail="Add normalisation (BatchNorm/LayerNorm, Pre-LN in transformers) in the model's code, or scale "
            "residual branches down (Fixup).",
            references=[REFS["ioffe2015"], REFS["xiong2020"], REFS["zhang2019"]],
        )
    )
    return remediation


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when the first layer's (first block's, first time step's) gradient is 100x the last one's."""
    findings = [f for f in (_time_finding(m, rnn) for rnn in m.recurrent) if f is not None]
    for views in depth_profiles(m):
        found = _depth_finding(m, views[0])
        if found is not None:
            findings.append(found)
    return findings
