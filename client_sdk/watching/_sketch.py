"""Gradient and weight distributions: a 12-number sketch per layer (gradhealth.diagnostics.sketch), at a stride
the overhead budget allows."""

from __future__ import annotations

import math
from collections import deque

import torch
from gradhealth.diagnostics.sketch import MAX_EXACT, QUANTILES, WIDTH, sketch
from torch import Tensor

from ._budget import MIN_COST, usable

__all__ = ["MAX_EXACT", "QUANTILES", "WIDTH", "SketchSchedule", "layer_sketches", "sketch"]

FLOOR = 10  # at most one sketch in FLOOR optimizer steps
CEILING = 10_000
# Sketches take at most this share of the budget (and never more than recording leaves): the budget times only
# its own sections, while shipping (msgpack and HTTP on a thread that takes the GIL) and cache effects go unseen;
# on the watch benchmark's CNN recording measured 0.5% of a step while watch() added 2.5-4.5%.
SHARE = 1 / 3


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
    a the seconds per step left to sketches: of the room max(usable(budget) x step time, MIN_COST), at most SHARE
    and never more than recording's own measured cost per step leaves (docs/runs.md). Recording and
    sketches then share one budget; at most FLOOR, at least CEILING steps apart (CEILING when nothing is left).
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
        room = max((usable(self.budget) or 0.0) * plain_step, MIN_COST)
        left = min(SHARE * room, room - (recording or 0.0) * plain_step)
        stride = math.ceil(cost / left - 1e-9) if left > 0 else CEILING
        self.stride = max(FLOOR, min(CEILING, stride))
