"""Value-to-pixel scales shared by the charts: log or linear, whole decades or round steps, and their ticks."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .render import finite
from .render import format_number as _num


def value_range(values: list[float], log: bool) -> tuple[float, float]:
    """Whole decades on a log axis; a padded, rounded span on a linear one; a unit span when nothing is drawable."""
    if log:
        logs = [math.log10(v) for v in values if v > 0]
        if not logs:
            return -1.0, 0.0
        first, last = math.floor(min(logs)), math.ceil(max(logs))
        return float(first), float(max(last, first + 1))
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if low == high:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    tick = nice_step((high - low) / 4)
    return math.floor(low / tick) * tick, math.ceil(high / tick) * tick


def wants_log(values: list[float]) -> bool:
    """Loss and lr go log only when positive and spanning more than two decades; otherwise linear reads better."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 100


def nice_step(raw: float) -> float:
    """The round tick spacing (1, 2, 2.5 or 5 times a power of ten) at or above `raw`, shared by every chart."""
    exponent = math.floor(math.log10(raw))
    mantissa = raw / 10**exponent
    step: float = next(m for m in (1, 2, 2.5, 5, 10) if m >= mantissa - 1e-9) * 10**exponent  # int ** int is Any
    return step


@dataclass(frozen=True)
class Scale:
    """Maps a value to a pixel along one axis, log10 or linear, so marks and ticks share one mapping."""

    low: float  # log10 of the low end on a log axis
    high: float
    log: bool
    start: float  # the pixel of `low`
    end: float  # the pixel of `high`

    def __call__(self, value: float) -> float:
        """Values outside the range (or at or below zero on a log axis) are pinned to its edges: still visible."""
        level = (math.log10(value) if value > 0 else self.low) if self.log else value
        fraction = min(max((level - self.low) / (self.high - self.low), 0.0), 1.0)
        return self.start + (self.end - self.start) * fraction

    def ticks(self) -> list[tuple[float, str]]:
        """Whole decades on a log axis (thinned to keep labels 40 px apart), round steps on a linear one."""
        if self.log:
            room = max(2, int(abs(self.end - self.start) / 40))
            every = max(1, math.ceil((self.high - self.low) / room))
            return [(10.0**d, f"1e{d}") for d in range(int(self.low), int(self.high) + 1, every)]
        step = nice_step((self.high - self.low) / 4)
        count = math.floor((self.high - self.low) / step + 1e-9)
        return [(round(self.low + k * step, 12), _num(round(self.low + k * step, 12))) for k in range(count + 1)]


def scale_for(values: list[float], extent: list[float], start: float, end: float, log: bool | None = None) -> Scale:
    """Log when the values are positive and span more than two decades; the range also covers `extent` (bounds)."""
    use_log = wants_log(values) if log is None else log
    covered = [v for v in values + extent if finite(v) and (v > 0 or not use_log)]
    low, high = value_range(covered, use_log)
    return Scale(low, high, use_log, start, end)
