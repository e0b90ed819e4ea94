"""saturated_activation: units in their flat region (sigmoid/tanh, or GELU/SiLU for x << 0) pass almost no gradient."""

from __future__ import annotations

import statistics

from gradhealth.report import Finding, Remediation

from ..activations import gaussian_flat_share
from ..measurements import ActivationMeasure, LayerMeasure, Measurements
from .activation_rule import fraction_findings
from .advice import GAIN, initialisable, off_scale, own_input_rms, reinit_remediation
from .common import REFS, fmt, span

RULE_ID = "saturated_activation"

# A unit counts as saturated when its local derivative is below 1% of its maximum
# (activations.FLAT_DERIVATIVE_FRACTION).
# SageMaker Debugger and DeepDiagnosis fire when more than 50% of a layer is saturated; at 90% the
# layer is effectively a constant.
WARNING_FRACTION = 0.5
ERROR_FRACTION = 0.9


SATURATING = {"sigmoid", "tanh", "hardsigmoid", "hardtanh", "lstm_gates"}
# Rectifier-like functions (GELU, SiLU, ...) are flat only for x << 0, so their flat share stays below
# 50% at any scale. Unit-scale pre-activations (LayerNorm before a variance-preserving layer) make a
# few percent flat; the thresholds are the flat share that Gaussian pre-activations 4x (warning) and
# 16x (error) that scale would give, computed from each function's own derivative.
RECTIFYING = {"gelu", "silu", "mish", "elu", "selu", "softplus", "hardswish"}
WARNING_SCALE = 4.0
ERROR_SCALE = 16.0


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when sigmoid/tanh units sit in their flat region, or a rectifier's inputs are far off scale."""
    findings = _saturating(m)
    for kind in sorted({a.kind for a in m.activations} & RECTIFYING):
        findings += _rectifying(m, kind)
    return findings


def _saturating(m: Measurements) -> list[Finding]:
    """Sigmoid/tanh-like units: at least half of the outputs in the flat region."""
    return fraction_findings(
        m,
        rule=RULE_ID,
        title="Saturated activations",
        kinds=SATURATING,
        value=lambda a: a.saturated,
        warning=WARNING_FRACTION,
        error=ERROR_FRACTION,
        describe="Outputs in the flat region (derivative < 1% of its maximum)",
        remediation=lambda flagged: _saturating_remediation(m, flagged),
    )


def _rectifying(m: Measurements, kind: str) -> list[Finding]:
    """GELU/SiLU-like units: a flat share only pre-activations far off unit scale produce."""
    return fraction_findings(
        m,
        rule=RULE_ID,
        title=f"{kind.upper()} units in their flat region",
        kinds={kind},
        value=lambda a: a.saturated,
        warning=gaussian_flat_share(kind, WARNING_SCALE),
        error=gaussian_flat_share(kind, ERROR_SCALE),
        describe=f"{kind} units with derivative < 1% of its maximum (inputs far below zero), "
        f"more than pre-activations {fmt(WARNING_SCALE)}x the unit scale would give",
        remediation=lambda flagged: _rectifying_remediation(m, flagged),
    )


def _feeders(m: Measurements, flagged: list[ActivationMeasure]) -> tuple[list[LayerMeasure], float | None]:
    """The Linear/conv layers computing the flagged activations' inputs, and the median RMS of those inputs."""
    by_name = {layer.name: layer for layer in m.layers}
    named = dict.fromkeys(a.feeding_layer for a in flagged if a.feeding_layer in by_name)
    feeders = [by_name[name] for name in named if name is not None and initialisable(by_name[name])]
    spreads = [a.input_std for a in flagged if a.input_std] or [
        layer.output_rms for layer in feeders if layer.output_rms
    ]
    return feeders, statistics.median(spreads) if spreads else None


def _rescale(feeders: list[LayerMeasure], spread: float | None) -> Remediation | None:
    """Scale the feeding layers' weights so the pre-activations come back to unit RMS."""
    if not feeders or spread is None or spread <= 1.0:
        return None
    names = [layer.name for layer in feeders]
    factor = float(f"{1.0 / spread:.2g}")
    return Remediation(
        action="rescale_preactivations",
        detail=f"The pre-activations have RMS {fmt(spread)} (unit scale keeps units off their flat region): "
        f"multiply the weights of {span(names)} by {fmt(factor)}.",
        snippet=f"with torch.no_grad():\n    for name in {names[:12]!r}:\n"
        f"        model.get_submodule(name).weight.mul_({factor})",
        references=[REFS["glorot2010"], REFS["he2015"]],
        params={"layers": names, "factor": factor},
    )


def _embedding_rescale(m: Measurements, feeders: list[LayerMeasure]) -> Remediation | None:
    """The feeders read a stream far above unit RMS and the model has embeddings: scale the tables by 1/RMS.

    Where a residual stream carries the input to the saturated units (no norm in front of them), its scale
    is the embeddings' (e.g. N(0,1) tables times sqrt(d), a scaling meant for std d^-0.5 tables; Vaswani
    et al. 2017): rescaling the feeders' weights treats one reader, rescaling the tables treats the source.
    """
    tables = [layer.name for layer in m.layers if layer.kind == "embedding" or layer.type == "Embedding"]
    scales = [rms for rms in (own_input_rms(layer) for layer in feeders) if rms is not None]
    if not tables or not scales or statistics.median(scales) <= WARNING_SCALE:
        return None
    stream = statistics.median(scales)
    factor = float(f"{1.0 / stream:.2g}")
    return Remediation(
        action="rescale_weights",
        detail=f"{span([layer.name for layer in feeders])} read a signal of RMS {fmt(stream)} (their own outputs over "
        f"their weight scale): the embeddings {span(tables)} set that stream's scale. Multiply the tables by "
        f"{fmt(factor)} so it comes back to unit RMS (std d^-0.5 tables if the forward multiplies by sqrt(d)).",
        snippet=f"with torch.no_grad():\n    for name in {tables[:12]!r}:\n"
        f"        model.get_submodule(name).weight.mul_({factor})",
        references=[REFS["glorot2010"]],
        params={"layers": tables, "factor": factor},
    )


def _structural(feeders: list[LayerMeasure], activation: str) -> list[Remediation]:
    """Normalisation before the activation and a non-saturating activation: code changes, not params."""
    names = [layer.name for layer in feeders]
    return [
        Remediation(
            action="normalize_preactivations",
            detail="Add LayerNorm/BatchNorm before the activation (a change to the model's code) so "
            "pre-activations stay near zero whatever the weights do.",
            references=[REFS["ioffe2015"], REFS["ba2016"], REFS["xiong2020"]],
            params={"layers": names, "norm": "LayerNorm"},
        ),
        Remediation(
            action="use_non_saturating_activation",
            detail=f"For hidden layers, prefer {activation} in the model's code: it does not saturate for positive inputs.",
            references=[REFS["he2015"]],
            params={"activation": activation},
        ),
    ]


def _saturating_remediation(m: Measurements, flagged: list[ActivationMeasure]) -> list[Remediation]:
    """Off-scale feeders: re-draw them with the activation's gain; at-scale ones: rescale the pre-activations."""
    feeders, spread = _feeders(m, flagged)
    kind = flagged[0].kind if flagged[0].kind in ("sigmoid", "tanh") else "tanh"
    off = off_scale(m, 1.25, [layer.name for layer in feeders])
    remediation = [r for r in (_rescale(feeders, spread), _embedding_rescale(m, feeders)) if r is not None]
    if off:
        names = [layer.name for layer in off]
        remediation.insert(
            0,
            reinit_remediation(
                "reinitialize",
                f"Re-initialise {span(names)} with std = gain/sqrt(fan_in), gain {fmt(GAIN[kind])} for {kind} "
                f"(calculate_gain('{kind}')), so their outputs stay in the activation's linear range.",
                names,
                kind,
            ),
        )
    return remediation + _structural(feeders, "gelu")


def _rectifying_remediation(m: Measurements, flagged: list[ActivationMeasure]) -> list[Remediation]:
    """Rescale the feeders' weights to unit-scale pre-activations; else normalise before the activation."""
    feeders, spread = _feeders(m, flagged)
    rescales = [r for r in (_rescale(feeders, spread), _embedding_rescale(m, feeders)) if r is not None]
    return rescales + _structural(feeders, flagged[0].kind)[:1]
