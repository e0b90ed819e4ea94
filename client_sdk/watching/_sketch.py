"""Gradient and weight distributions: a 12-number sketch per layer, taken at a stride the overhead budget allows.

A sketch is TensorBoard's compressed histogram: the 0, 6.68, 15.87, 30.85, 50, 69.15, 84.13, 93.32
and 100th percentiles (the median and +-0.5, 1, 1.5 sigma of a normal distribution, and the extremes)
of the layer's finite values, then its counts of exact zeros, of non-finite values, and of all values.
Quantiles interpolate linearly, as torch.quantile: exact for a layer of at most MAX_EXACT values; a
larger layer is read through a uniform sample of MAX_EXACT values (drawn with replacement), whose
quantiles are within 0.0026 in rank of the full tensor's with probability 1 - 1e-6 (the
Dvoretzky-Kiefer-Wolfowitz bound, sqrt(ln(2/1e-6) / (2 * 2^20))). Counts are always exact.
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import Tensor

QUANTILES = (0.0, 0.0668, 0.1587, 0.3085, 0.5, 0.6915, 0.8413, 0.9332, 1.0)
WIDTH = len(QUANTILES) + 3  # the quantiles, zeros, non-finite, count
MAX_EXACT = 2**20
FLOOR = 10  # at most one sketch in FLOOR optimizer steps
CEILING = 10_000
SHARE = 1 / 3  # sketches may cost this share of the budget, on top of recording (which keeps its own)


def sketch(tensors: list[Tensor], generator: torch.Generator | None = None) -> Tensor:
    """The WIDTH numbers of one layer's values (float32, on their device); no host sync."""
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors]) if tensors else torch.zeros(0)
    out = torch.full((WIDTH,), math.nan, device=flat.device)
    out[-1] = flat.numel()
    if not flat.numel():
        out[-3:-1] = 0.0
        return out
    finite = torch.isfinite(flat)
    out[-3] = torch.count_nonzero(flat == 0)
    out[-2] = flat.numel() - torch.count_nonzero(finite)
    values = torch.where(finite, flat, math.nan)
    if values.numel() > MAX_EXACT:
        index = torch.randint(values.numel(), (MAX_EXACT,), device=values.device, generator=generator)
        values = values[index]
    q = torch.tensor(QUANTILES, device=values.device)
    out[: len(QUANTILES)] = torch.nanquantile(values, q)  # all non-finite: NaN, "no finite value"
    return out


def layer_sketches(grads: list[list[Tensor]], weights: list[list[Tensor]]) -> Tensor:
    """(2, L, WIDTH): each layer's gradient sketch (row 0) and weight sketch (row 1)."""
    rows = [torch.stack([sketch(tensors) for tensors in kind]) for kind in (grads, weights)]
    return torch.stack(rows)


class SketchSchedule:
    """When to sketch: a fixed stride, or the smallest one whose measured cost fits SHARE of the budget."""

    def __init__(self, setting: bool | int, budget: float | None) -> None:
        if isinstance(setting, bool):
            self.enabled, self.fixed = setting, None
        else:
            if setting < 1:
                raise ValueError(f"distributions is True, False or a stride in optimizer steps >= 1; got {setting}")
            self.enabled, self.fixed = True, setting
        self.stride = self.fixed or FLOOR
        self.share = budget * SHARE if budget else None
        self.last: int | None = None
        self.taken = 0
        self._costs: deque[float] = deque(maxlen=5)

    def due(self, step: int) -> bool:
        """Whether a recorded optimizer step `step` gets a sketch."""
        return self.enabled and (self.last is None or step - self.last >= self.stride)

    def took(self, step: int, seconds: float, plain_step: float | None) -> None:
        """A sketch at `step` cost `seconds`; with a step time measured, the stride follows the cost."""
        self.last = step
        self.taken += 1
        self._costs.append(seconds)
        if self.fixed is not None or self.share is None or not plain_step:
            return
        cost = sorted(self._costs)[len(self._costs) // 2]
        self.stride = max(FLOOR, min(CEILING, math.ceil(cost / (self.share * plain_step) - 1e-9)))
