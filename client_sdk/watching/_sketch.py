"""Gradient and weight distributions: a 12-number sketch per layer (gradhealth.diagnostics.sketch), at a stride
the overhead budget allows."""

from __future__ import annotations

import math
from collections import deque

import torch
from gradhealth.diagnostics.sketch import MAX_EXACT, QUANTILES, WIDTH, sketch
from torch import Tensor

__all__ = ["MAX_EXACT", "QUANTILES", "WIDTH", "SketchSchedule", "layer_sketches", "sketch"]

FLOOR = 10  # at most one sketch in FLOOR optimizer steps
CEILING = 10_000
SHARE = 1 / 3  # sketches may cost this share of the budget, on top of recording (which keeps its own)


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
