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

from ._budget import MIN_COST

QUANTILES = (0.0, 0.0668, 0.1587, 0.3085, 0.5, 0.6915, 0.8413, 0.9332, 1.0)
WIDTH = len(QUANTILES) + 3  # the quantiles, zeros, non-finite, count
MAX_EXACT = 2**20
FLOOR = 10  # at most one sketch in FLOOR optimizer steps
CEILING = 10_000


def sketch(
    tensors: list[Tensor], generator: torch.Generator | None = None, levels: tuple[float, ...] = QUANTILES
) -> Tensor:
    """The quantiles at `levels` of one layer's values, then zeros, non-finite, count (float32, on their device)."""
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors]) if tensors else torch.zeros(0)
    out = torch.full((len(levels) + 3,), math.nan, device=flat.device)
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
    q = torch.tensor(levels, device=values.device)
    out[: len(levels)] = torch.nanquantile(values, q)  # all non-finite: NaN, "no finite value"
    return out


def layer_sketches(
    grads: list[list[Tensor]], weights: list[list[Tensor]], levels: tuple[float, ...] = QUANTILES
) -> Tensor:
    """(2, L, len(levels) + 3): each layer's gradient sketch (row 0) and weight sketch (row 1)."""
    rows = [torch.stack([sketch(tensors, levels=levels) for tensors in kind]) for kind in (grads, weights)]
    return torch.stack(rows)


class SketchSchedule:
    """When to sketch: a fixed stride, or the smallest one whose measured cost fits what the budget leaves.

    Adaptive (distributions=True with a budget): no sketch before the overhead budget has measured the
    step time; after each sketch the stride is ceil(c / a), c the median cost of the last 5 sketches and
    a the seconds per step that recording leaves of the budget: max(budget x step time, MIN_COST) less
    recording's own measured cost per step at its stride (docs/runs.md). Recording and sketches then
    share one budget; at most FLOOR, at least CEILING steps apart (CEILING when nothing is left).
    """

    def __init__(self, setting: bool | int, budget: float | None) -> None:
        if isinstance(setting, bool):
            self.enabled, self.fixed = setting, None
        else:
            if setting < 1:
                raise ValueError(f"distributions is True, False or a stride in optimizer steps >= 1; got {setting}")
            self.enabled, self.fixed = True, setting
        self.stride = self.fixed or FLOOR
        self.budget = budget or None
        self.agreed: int | None = None  # FSDP: rank 0's offer() as of the last all_reduce (0: not yet)
        self.last: int | None = None
        self.taken = 0
        self._costs: deque[float] = deque(maxlen=5)

    def offer(self, plain_step: float | None) -> int:
        """This handle's own stride now; 0 while an adaptive schedule waits for the step time to be measured."""
        if self.fixed is not None:
            return self.fixed
        return self.stride if plain_step or self.budget is None else 0

    def due(self, step: int, plain_step: float | None) -> bool:
        """Whether a recorded optimizer step `step` gets a sketch (under FSDP from the agreed stride alone)."""
        if not self.enabled:
            return False
        stride = self.offer(plain_step) if self.agreed is None or self.fixed is not None else self.agreed
        return stride > 0 and (self.last is None or step - self.last >= stride)

    def took(self, step: int, seconds: float, plain_step: float | None, recording: float | None) -> None:
        """A sketch at `step` cost `seconds`; with the step time and recording's share (a fraction) measured,
        the stride follows the cost."""
        self.last = step
        self.taken += 1
        self._costs.append(seconds)
        self.charge(0.0, plain_step, recording)

    def charge(self, seconds: float, plain_step: float | None, recording: float | None) -> None:
        """Add `seconds` to the last sketch's cost (FSDP: rank 0's merge) and choose the stride again."""
        if self._costs:
            self._costs[-1] += seconds
        if self.fixed is not None or self.budget is None or not plain_step or not self._costs:
            return
        cost = sorted(self._costs)[len(self._costs) // 2]
        left = max(self.budget * plain_step, MIN_COST) - (recording or 0.0) * plain_step
        stride = math.ceil(cost / left - 1e-9) if left > 0 else CEILING
        self.stride = max(FLOOR, min(CEILING, stride))
