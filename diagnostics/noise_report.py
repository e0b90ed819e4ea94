"""The noise check's part of the report: Report.estimates and LayerStats.gsnr."""

from __future__ import annotations

import math

from gradhealth.report import Estimate, LayerStats

from .measurements import Measurements
from .noise_stats import LEVEL, METHOD, Interval


def to_estimate(interval: Interval, samples: int) -> Estimate | None:
    """An Estimate, or None when the value itself is not finite (JSON has no Inf)."""
    if not math.isfinite(interval.value):
        return None
    return Estimate(
        value=interval.value, low=interval.low, high=interval.high, level=LEVEL, samples=samples, method=METHOD
    )


def noise_estimates(m: Measurements) -> dict[str, Estimate]:
    """Whole-model noise estimates keyed by statistic; empty when the noise check did not run."""
    if m.noise is None:
        return {}
    pairs = ((key, to_estimate(interval, m.noise.batch_size)) for key, interval in m.noise.estimates.items())
    return {key: estimate for key, estimate in pairs if estimate is not None}


def attach_gsnr(rows: list[LayerStats], m: Measurements) -> None:
    """Fill each parameter layer's GSNR from the noise check."""
    if m.noise is None:
        return
    for row in rows:
        interval = m.noise.layer_gsnr.get(row.name)
        if interval is not None and row.num_parameters:
            row.gsnr = to_estimate(interval, m.noise.batch_size)
