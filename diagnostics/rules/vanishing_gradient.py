"""vanishing_gradient: the back-propagated gradient dies out toward the input, or back in time."""

from __future__ import annotations

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements, RecurrentMeasure
from .advice import GAIN, feeders, forget_gate_remediation, initialisable, orthogonal_remediation, reinit_remediation
from .common import REFS, batch_confidence, fmt, label_span, layer_label, orders_of_magnitude, span
from .gradient_profile import Profile, depth_profiles

RULE_ID = "vanishing_gradient"

# AUTOTRAINER (Zhang et al., ICSE 2021) flags first/last gradient ratios below 1e-3. A healthy
# network keeps the back-propagated signal within about one order of magnitude across depth
# (Glorot & Bengio 2010; our healthy zoo stays within 10x), so 100x is already a warning.
WARNING_RATIO = 1e-2
ERROR_RATIO = 1e-3

_SATURATING = {"sigmoid", "tanh", "hardsigmoid", "hardtanh"}
# A layer within 25% of the Kaiming std (poor_initialization's MISMATCH) is already at that scale.
KAIMING_TOLERANCE = 1.25


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


def _kaiming_candidates(m: Measurements, trunk: str | None) -> list[str]:
    """Hidden Linear/conv layers (an activation follows) off the Kaiming (ReLU) scale: what a re-draw changes.

    The output layer (nothing follows it) and embeddings, norms and recurrent cells are never offered
    a ReLU Kaiming init.
    """
    names = []
    for layer in m.layers:
        if layer.next_activation is None or (trunk and not layer.name.startswith(trunk + ".")):
            continue
        target = GAIN["relu"] / layer.fan_in**0.5 if layer.fan_in else None
        if not initialisable(layer) or target is None or not layer.weight_std:
            continue
        if not 1 / KAIMING_TOLERANCE <= layer.weight_std / target <= KAIMING_TOLERANCE:
            names.append(layer.name)
    return names


# The gain that preserves the back-propagated signal through an activation: 1/f'(0). For tanh it is
# torch's calculate_gain('tanh') = 5/3 (LeCun's scaled tanh); for sigmoid f'(0) = 1/4, so 4, not
# calculate_gain('sigmoid') = 1, which preserves only the forward variance (Glorot & Bengio 2010; the
# LISA Deep Learning Tutorials draw sigmoid weights 4x the tanh ones).
BACKWARD_GAIN = {"sigmoid": 4.0, "tanh": 5.0 / 3.0}
# The activation's output at 0: the mean a layer reading it gets. The 4x gain holds only at sigmoid'(0),
# so the biases are centred to cancel the 1/2 x weight-sum offset (LeCun et al. 1998).
INPUT_MEAN = {"sigmoid": 0.5}


def _backward_gain_remediation(m: Measurements, kinds: set[str]) -> Remediation | None:
    """Re-draw the layers reading sigmoid/tanh outputs with the gain that keeps the backward signal's scale.

    Back-propagation multiplies by W_l^T and then by f'(z) of the activation that feeds W_l: the factor
    1/f'(0) belongs to the layer reading the activation, not the one feeding it. The output layer keeps
    its scale: one uncompensated factor is harmless, while 4x larger logits start training from a far higher loss.
    """
    kind = "sigmoid" if "sigmoid" in kinds else ("tanh" if "tanh" in kinds else None)
    if kind is None:
        return None
    gain = BACKWARD_GAIN[kind]
    layers = []
    for layer in m.layers:
        if not initialisable(layer) or not layer.fan_in or not layer.weight_std:
            continue
        if not any(source.next_activation == kind for source in feeders(m, layer)):
            continue
        if layer.next_activation is None:
            continue  # the output layer: a larger gain there only inflates the logits and the initial loss
        if not 1 / KAIMING_TOLERANCE <= layer.weight_std * layer.fan_in**0.5 / gain <= KAIMING_TOLERANCE:
            layers.append(layer.name)
    if not layers:
        return None
    return reinit_remediation(
        "reinitialize",
        f"If the {kind} units stay: each passes back at most {'1/4' if kind == 'sigmoid' else '1'} of the gradient "
        f"at zero, so re-draw the {len(layers)} layers reading them ({span(layers)}) with std = {fmt(gain)}/sqrt(fan_in) "
        f"(1/{kind}'(0){'; calculate_gain(' + repr(kind) + ') = 1 keeps only the forward variance' if kind == 'sigmoid' else ''}), "
        + (
            "biases = -1/2 x each unit's weight sum (the sigmoid's mean output is 1/2: centred pre-activations stay "
            "where the derivative is 1/4)"
            if kind == "sigmoid"
            else "bias 0"
        )
        + ": the backward signal then keeps its scale across depth.",
        layers,
        kind,
        gain=gain,
        references=[REFS["glorot2010"], REFS["lecun1998"]],
        input_mean=INPUT_MEAN.get(kind),
    )


def _remediation(m: Measurements, profile: Profile) -> list[Remediation]:
    """Type-correct advice: forget-gate bias for LSTMs, orthogonal recurrence, ReLU + Kaiming for Linear/Conv."""
    kinds = {layer.next_activation for layer in profile.layers if layer.next_activation is not None}
    lstms = [layer.name for layer in m.layers if layer.type == "LSTM"]
    plain_rnns = [layer.name for layer in m.layers if layer.type in ("GRU", "RNN")]
    kaiming = _kaiming_candidates(m, profile.trunk)
    remediation: list[Remediation] = []
    if lstms:
        remediation.append(forget_gate_remediation(lstms))
    if plain_rnns:
        remediation.append(
            orthogonal_remediation(
                "orthogonal_recurrent_init",
                plain_rnns,
                f"Initialise the weights of {', '.join(plain_rnns)} orthogonally (spectral radius 1) so the "
                "recurrence neither shrinks nor grows the gradient.",
            )
        )
    if kinds & _SATURATING:
        saturating = [a.name for a in m.activations if a.kind in kinds & _SATURATING]
        remediation.append(
            Remediation(
                action="replace_saturating_activation",
                detail=f"Layers use {', '.join(sorted(kinds & _SATURATING))}: each passes at most 1/4 (sigmoid) or 1 "
                "(tanh) of the gradient and nothing once saturated, so depth multiplies the loss. Replace them "
                "with ReLU/GELU in the model's code (a structural change: no init fixes it), then use Kaiming init.",
                snippet="nn.ReLU()  # in place of nn.Sigmoid()/nn.Tanh() between the Linear/Conv layers",
                references=[REFS["glorot2010"], REFS["he2015"]],
                params={"activation": "relu", "layers": saturating[:32]},
            )
        )
    backward = _backward_gain_remediation(m, kinds & _SATURATING)
    if backward is not None:
        remediation.append(backward)
    if kaiming:
        remediation.append(
            reinit_remediation(
                "use_relu_and_kaiming_init",
                f"Re-initialise the {len(kaiming)} Linear/Conv layers not at the Kaiming scale ({span(kaiming)}) "
                "with Kaiming-normal (gain √2, bias 0), with ReLU-family activations after them, so each layer "
                "keeps the gradient scale.",
                kaiming,
                "relu",
            )
        )
    remediation.append(
        Remediation(
            action="add_normalization_or_residuals",
            detail="Add BatchNorm/LayerNorm between layers, or residual connections, so the gradient has a short path.",
            references=[REFS["ioffe2015"], REFS["ba2016"], REFS["he2016"]],
        )
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
    remediation = _remediation(m, profile)
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


def _time_remediation(rnn: RecurrentMeasure) -> list[Remediation]:
    """LSTM: forget-gate bias 1; GRU/RNN: orthogonal recurrence; a plain RNN: also a gated cell."""
    kind = rnn.op.split(".")[-2] if "." in rnn.op else rnn.op
    orthogonal = orthogonal_remediation(
        "orthogonal_recurrent_init",
        [rnn.name],
        f"Initialise the weights of {rnn.name} orthogonally (spectral radius 1): the default uniform init "
        "shrinks the gradient at every step back in time.",
    )
    bptt = Remediation(
        action="shorten_bptt",
        detail="Shorten the back-propagation window (truncated BPTT) or add attention over the sequence.",
        references=[REFS["pascanu2013"]],
    )
    if "lstm" in kind:
        return [forget_gate_remediation([rnn.name]), orthogonal, bptt]
    if "gru" in kind:
        return [orthogonal, bptt]
    gated = Remediation(
        action="use_gated_recurrence",
        detail=f"{rnn.name} is a plain RNN: replace it with nn.LSTM or nn.GRU (gates keep a near-constant error "
        "flow), a change to the model's code.",
        snippet=f"# in the model's __init__, in place of the nn.RNN at {rnn.name!r}:\n"
        "nn.LSTM(input_size, hidden_size, batch_first=True)",
        references=[REFS["hochreiter1997"], REFS["pascanu2013"]],
        params={"layers": [rnn.name], "cell": "LSTM"},
    )
    return [orthogonal, gated, bptt]


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
        remediation=_time_remediation(rnn),
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
