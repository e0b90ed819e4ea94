"""Shared shape of the two activation-fraction rules (dead and saturated units)."""

from __future__ import annotations

from collections.abc import Callable

from gradhealth.report import Finding, Remediation

from ..measurements import ActivationMeasure, Measurements
from .common import batch_confidence, fmt, span


def fraction_findings(
    m: Measurements,
    *,
    rule: str,
    title: str,
    kinds: set[str],
    value: Callable[[ActivationMeasure], float | None],
    warning: float,
    error: float,
    describe: str,
    remediation: list[Remediation] | Callable[[list[ActivationMeasure]], list[Remediation]],
) -> list[Finding]:
    """One finding per rule listing every activation whose fraction crosses the warning level.

    `remediation` may be a function of the flagged activations: params name their feeding layers.
    """
    hits = [(a, value(a)) for a in m.activations if a.kind in kinds and value(a) is not None]
    flagged = [(a, v) for a, v in hits if v is not None and v >= warning]
    if not flagged:
        return []
    worst = max(v for _, v in flagged if v is not None)
    names = [a.name for a, _ in flagged]
    feeders = [a.feeding_layer for a, _ in flagged if a.feeding_layer]
    details = ", ".join(f"{_label(a)} {fmt(100 * v)}%" for a, v in flagged[:8] if v is not None)
    first = flagged[0][0]
    return [
        Finding(
            rule=rule,
            severity="error" if worst >= error else "warning",
            title=title,
            message=f"{describe} in {span(names)}: {details}.",
            layers=list(dict.fromkeys(names + feeders)),
            evidence={
                "worst_fraction": worst,
                "activation": first.name,
                "activation_kind": first.kind,
                "feeding_layer": first.feeding_layer,
                "activations": names,
                "feeding_layers": feeders,
                **{f"fraction:{a.name}": v for a, v in flagged[:20]},
            },
            thresholds={"warning_fraction": warning, "error_fraction": error},
            remediation=remediation([a for a, _ in flagged]) if callable(remediation) else remediation,
            confidence=batch_confidence(m.batch_size, full_at=16),
        )
    ]


def _label(a: ActivationMeasure) -> str:
    """'act (gelu, fed by fc1)': the op and the layer whose weights and bias set its input."""
    fed = f", fed by {a.feeding_layer}" if a.feeding_layer else ""
    spread = f", input std {fmt(a.input_std)}" if a.input_std is not None else ""
    return f"{a.name} ({a.kind}{fed}{spread})"
