"""The report's distributions and activation series, read from a run's extra segments (store/run_extra_segments)."""

from __future__ import annotations

import numpy as np
from gradhealth.report.schema import ActivationSeries, LayerDistribution, Timeline
from sqlalchemy.orm import Session

from .models import TrainingRun
from .run_extra_segments import ACTIVATIONS_SERIES, DISTRIBUTIONS_SERIES, read_extra, run_activations

QUANTILES = [0.0, 0.0668, 0.1587, 0.3085, 0.5, 0.6915, 0.8413, 0.9332, 1.0]  # the SDK's sketch levels
WIDTH = len(QUANTILES) + 3
MAX_POINTS = 400
MAX_ACTIVATIONS = 24


def _or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values.tolist()]


def _thin(count: int) -> np.ndarray:
    """At most MAX_POINTS evenly spaced row indices, the first and last included."""
    if count <= MAX_POINTS:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, MAX_POINTS).round().astype(np.int64))


def add_extras(session: Session, run: TrainingRun, timeline: Timeline, names: list[str], charted: list[int]) -> None:
    """Fill timeline.distributions for the charted layers and timeline.activations (both empty when not sent)."""
    steps, sketches = read_extra(session, run.id, DISTRIBUTIONS_SERIES, (2, len(names), WIDTH))
    if len(steps):
        rows = _thin(len(steps))
        steps, sketches = steps[rows], sketches[rows].astype(np.float64)
        for layer in charted:
            grad, weight = sketches[:, 0, layer], sketches[:, 1, layer]
            timeline.distributions[names[layer]] = LayerDistribution(
                steps=steps.tolist(),
                quantiles=QUANTILES,
                grad=[_or_none(row) for row in grad[:, : len(QUANTILES)]],
                weight=[_or_none(row) for row in weight[:, : len(QUANTILES)]],
                grad_zeros=_or_none(grad[:, -3]),
                grad_nonfinite=_or_none(grad[:, -2]),
                weight_zeros=_or_none(weight[:, -3]),
                weight_nonfinite=_or_none(weight[:, -2]),
                count=_or_none(np.where(np.isnan(grad[:, -1]), weight[:, -1], grad[:, -1])),
            )
    declared = run_activations(run.config)
    if not declared:
        return
    steps, fractions = read_extra(session, run.id, ACTIVATIONS_SERIES, (2, len(declared)))
    rows = _thin(len(steps))
    steps, fractions = steps[rows], fractions[rows].astype(np.float64)
    for index, item in enumerate(declared[:MAX_ACTIVATIONS]):
        timeline.activations[item["name"]] = ActivationSeries(
            kind=item["kind"],
            steps=steps.tolist(),
            dead=_or_none(fractions[:, 0, index]),
            saturated=_or_none(fractions[:, 1, index]),
        )


__all__ = ["add_extras"]
