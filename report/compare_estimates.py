"""Compare two reports' stochastic estimates by their intervals: a shift inside the noise is no change.

An estimate changed only when both reports give it an interval and the intervals do not overlap; it got
worse only when it moved in the direction the tolerance calls worse for that name (sharper curvature, a
noisier gradient). Without an interval on either side nothing can be said, so nothing is reported."""

from __future__ import annotations

from pydantic import BaseModel

from .render import format_number as _num
from .render import interval_text
from .schema import Estimate, Report

# Which way is worse, for the estimates whose direction is not a matter of taste; others are reported, not judged.
WORSE_DIRECTION: dict[str, str] = {
    "hessian_max_eigenvalue": "up",  # sharper: the largest stable step shrinks
    "hessian_condition_ratio": "up",
    "gsnr": "down",  # the samples agree less on the direction
    "across_batches.hessian_max_eigenvalue": "up",
    "across_batches.gsnr": "down",
}


class EstimateChange(BaseModel):
    """One estimate whose intervals in the two reports do not overlap."""

    name: str
    before: Estimate
    after: Estimate
    worse: bool
    """It moved the way `Tolerance.estimate_worse` calls worse for this name."""
    description: str


def _interval(e: Estimate) -> tuple[float, float] | None:
    """(low, high) in order, or None where the estimator gave no two-sided interval."""
    if e.low is None or e.high is None:
        return None
    return min(e.low, e.high), max(e.low, e.high)


def _moved(a: Estimate, b: Estimate) -> str | None:
    """'up' or 'down' when the intervals are disjoint; None when they overlap or either has none."""
    ia, ib = _interval(a), _interval(b)
    if ia is None or ib is None:
        return None
    if ib[0] > ia[1]:
        return "up"
    if ib[1] < ia[0]:
        return "down"
    return None


def estimate_changes(before: Report, after: Report, worse_direction: dict[str, str]) -> list[EstimateChange]:
    """The estimates present in both reports whose intervals no longer overlap, in the newer report's order."""
    out = []
    for name, b in after.estimates.items():
        a = before.estimates.get(name)
        direction = None if a is None else _moved(a, b)
        if a is None or direction is None:
            continue
        out.append(
            EstimateChange(
                name=name,
                before=a,
                after=b,
                worse=worse_direction.get(name) == direction,
                description=f"{name} {_num(a.value)} {interval_text(a)} → {_num(b.value)} {interval_text(b)}",
            )
        )
    return out
