"""The gradient-log metric list: the one definition the SDK, the API, the store and the run rules share.

Dependency-free on purpose: the SDK imports it without loading the server or the rule engine.
"""

from __future__ import annotations

from typing import Literal, get_args

# One column per metric, (steps × layers) each, in this order on the wire and in the stored segments.
GradientMetric = Literal["grad_norm", "grad_max_abs", "nonfinite", "weight_norm", "update_norm"]
METRICS: tuple[GradientMetric, ...] = get_args(GradientMetric)

__all__ = ["METRICS", "GradientMetric"]
