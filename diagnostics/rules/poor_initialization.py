"""poor_initialization: weight scales that make the forward signal grow or shrink along a serial chain of layers."""

from __future__ import annotations

import math

from gradhealth.report import Finding, Remediation

from ..measurements import LayerMeasure, Measurements
from .advice import nonlinearity, off_scale, reinit_remediation
from .common import REFS, fmt, orders_of_magnitude, span

RULE_ID = "poor_initialization"

# Variance-preserving std is gain / sqrt(fan_in) (He et al. 2015; LeCun 1998), with the gains of
# torch.nn.init.calculate_gain. Each layer scales the signal by about std / that value, so L layers
# scale it by that ratio^L; Xavier on ReLU (ratio 1/sqrt(2)) halves the variance per layer.
GAINS = {
    "relu": math.sqrt(2.0),
    "relu6": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
    "gelu": math.sqrt(2.0),
    "silu": math.sqrt(2.0),
    "elu": math.sqrt(2.0),
    "mish": math.sqrt(2.0),
    "tanh": 5.0 / 3.0,
    "selu": 0.75,
    "sigmoid": 1.0,
}
# A layer is off-scale when its std differs from the variance-preserving one by more than 25%.
MISMATCH = 1.25
# Fire when the measured forward signal changes by 10x (warning) or 100x (error) across a run of
# at least 3 consecutive off-scale layers in the same direction.
MIN_RUN = 3
WARNING_DRIFT = 10.0
ERROR_DRIFT = 100.0
_INIT_LAYERS = ("Linear", "Conv1d", "Conv2d", "Conv3d")
_SATURATING = {"sigmoid", "tanh"}


def recommended_std(layer: LayerMeasure) -> float | None:
    """Kaiming/LeCun std for the layer's fan-in and following activation."""
    if not layer.fan_in:
        return None
    return GAINS.get(layer.next_activation or "", 1.0) / math.sqrt(layer.fan_in)


def _initialisable(layer: LayerMeasure) -> bool:
    """Linear- and conv-like layers, told by the ops they run (a transformers Conv1D is linear)."""
    return layer.kind in ("linear", "conv") if layer.kind is not None else layer.type in _INIT_LAYERS


def _scale_error(layer: LayerMeasure) -> tuple[int, float] | None:
    """(direction, std / recommended std); direction 0 when within MISMATCH, None when not judged."""
    target = recommended_std(layer)
    if not _initialisable(layer) or target is None or not layer.weight_std:
        return None
    ratio = layer.weight_std / target
    return (1 if ratio > MISMATCH else (-1 if ratio < 1 / MISMATCH else 0)), ratio


def _runs(m: Measurements) -> list[list[tuple[LayerMeasure, float]]]:
    """Serial chains of off-scale layers erring in one direction (depth order without a graph)."""
    if any(layer.serial_inputs is not None for layer in m.layers):
        return _serial_runs(m)
    return _sequential_runs(m)


def _serial_runs(m: Measurements) -> list[list[tuple[LayerMeasure, float]]]:
    """Longest chains along data flow: each layer transforms the previous one's output.

    Parallel projections (q/k/v, gate/up) read the same input and are not a chain; a branch added
    back to a residual stream, a normalisation or a softmax ends one (graph_map.serial_inputs).
    """
    best: dict[str, list[tuple[LayerMeasure, float]]] = {}
    for layer in m.layers:  # data-flow order: a layer's serial inputs come before it
        scaled = _scale_error(layer)
        if scaled is None or scaled[0] == 0:
            continue
        direction, ratio = scaled
        chain: list[tuple[LayerMeasure, float]] = []
        for source in layer.serial_inputs or []:
            previous = best.get(source, [])
            if previous and (previous[-1][1] > 1) == (direction > 0) and len(previous) > len(chain):
                chain = previous
        best[layer.name] = [*chain, (layer, ratio)]
    inner = {id(layer) for chain in best.values() for layer, _ in chain[:-1]}
    return [chain for chain in best.values() if id(chain[-1][0]) not in inner]


def _sequential_runs(m: Measurements) -> list[list[tuple[LayerMeasure, float]]]:
    """Consecutive initialisable layers whose scale errs in the same direction."""
    runs: list[list[tuple[LayerMeasure, float]]] = []
    current: list[tuple[LayerMeasure, float]] = []
    direction = 0
    for layer in m.layers:
        if "Norm" in layer.type:  # normalisation resets the signal scale: a run cannot span it
            if current:
                runs.append(current)
            current, direction = [], 0
            continue
        scaled = _scale_error(layer)
        if scaled is None:
            continue
        sign, ratio = scaled
        if sign != 0 and sign == direction:
            current.append((layer, ratio))
        else:
            if current:
                runs.append(current)
            current = [(layer, ratio)] if sign else []
            direction = sign
    if current:
        runs.append(current)
    return runs


def _saturating(m: Measurements, run: list[tuple[LayerMeasure, float]]) -> bool:
    kinds = {layer.next_activation for layer, _ in run}
    names = {a.name for a in m.activations if a.kind in _SATURATING and (a.saturated or 0) >= 0.5}
    return bool(kinds & _SATURATING) and bool(names)


def evaluate(m: Measurements) -> list[Finding]:
    """Fire on a run of off-scale layers that measurably distorts the signal or saturates units."""
    findings = []
    for run in _runs(m):
        if len(run) < MIN_RUN:
            continue
        first, last = run[0][0], run[-1][0]
        drift = (last.output_rms / first.output_rms) if first.output_rms and last.output_rms else None
        big = all(r > 1 for _, r in run)
        magnitude = max(drift, 1 / drift) if drift else 1.0
        saturates = big and _saturating(m, run)
        if magnitude < WARNING_DRIFT and not saturates:
            continue
        activation = first.next_activation or "linear"
        init = "kaiming_normal" if activation in ("relu", "relu6", "leaky_relu", "gelu", "silu") else "xavier_normal"
        ratios = [r for _, r in run]
        names = [layer.name for layer, _ in run]
        findings.append(
            Finding(
                rule=RULE_ID,
                severity="error" if magnitude >= ERROR_DRIFT else "warning",
                title="Initialisation scale distorts the signal",
                message=_message(names, activation, ratios, drift, saturates),
                layers=names,
                evidence={
                    "std_to_recommended": [float(r) for r in ratios],
                    "signal_ratio_last_to_first": drift,
                    "activation": activation,
                },
                thresholds={
                    "mismatch_factor": MISMATCH,
                    "warning_drift": WARNING_DRIFT,
                    "error_drift": ERROR_DRIFT,
                    "min_layers": MIN_RUN,
                },
                remediation=[_remediation(m, activation, init)],
                confidence=0.85,
            )
        )
    return findings


def _message(names: list[str], activation: str, ratios: list[float], drift: float | None, saturates: bool) -> str:
    """Say which layers are off-scale, by how much, and what it does to the signal."""
    text = (
        f"{span(names)} ({activation}) have weight std {fmt(min(ratios))}–{fmt(max(ratios))}× "
        "the variance-preserving value gain/sqrt(fan_in)"
    )
    if drift:
        direction = "grows" if drift > 1 else "shrinks"
        text += f"; the forward signal {direction} 10^{orders_of_magnitude(drift):.1f} across them"
    if saturates:
        text += "; the following sigmoid/tanh units saturate"
    return text + "."


def _remediation(m: Measurements, activation: str, init: str) -> Remediation:
    """Re-draw every off-scale layer of the model (not only this run's), none already at the right scale."""
    layers = [layer.name for layer in off_scale(m, MISMATCH)]
    scheme = "kaiming_normal"  # std = gain/sqrt(fan_in): the scale this rule measures against
    nonlin = nonlinearity(activation)
    return reinit_remediation(
        "reinitialize",
        f"Re-initialise the {len(layers)} off-scale layers ({span(layers)}) with std = gain/sqrt(fan_in), "
        f"gain {fmt(GAINS.get(activation, 1.0))} for {activation} (calculate_gain('{nonlin}')); {init} is the "
        "usual name for it. Layers already at that scale are left alone.",
        layers,
        activation,
        scheme=scheme,
        references=[REFS["he2015"], REFS["glorot2010"], REFS["lecun1998"]],
    )
