"""The overhead budget: watch() times its own hooks and records less often while they cost too much.

Measured on the training thread with the host clock: the hook bodies (statistics, the record's
host copy, loss bookkeeping, log()) and the wall time between consecutive optimizer steps. The
step's own time, the "plain" step, is the interval less what watch() spent in it. On CUDA the
host clock sees the kernel launches and the async copy, not the kernels' device time.

The rule (docs/runs.md): after WARMUP_STEPS steps, and once each sample slot has been timed twice,
at every recorded step, with stride s, c the cost of a recorded step, u that of a step not
recorded (the hook calls and log(): microseconds) and p the plain step time,

    overhead(s) = (c/p + (s - 1) u/p) / s        cost per step(s) = (c + (s - 1) u) / s

the stride rises when overhead(stride) > budget AND cost per step(stride) > MIN_COST; it falls
when overhead(stride) < LOWER x budget OR cost per step(stride) < LOWER x MIN_COST. Either way
it moves to the smallest multiple of `every` (at most MAX_FACTOR x every) whose overhead is
<= AIM x budget or whose cost per step is <= AIM x MIN_COST: a steady state sits inside the
[LOWER, 1] band, so noise does not make it flap. MIN_COST keeps tiny models, whose whole cost is
a fraction of a millisecond per step, recording at `every`.

The estimates are robust to one-off stalls (a descheduled thread, a GIL hand-over, an evaluation
pass between two steps), being medians: p of the last STEP_WINDOW plain steps; u/p of the last
STEP_WINDOW // 2 steps not recorded, each taken against its own step (the first hook calls after
a long pause run on cold caches: u and p change together); c, for the overhead, is the mean over
the sample slots (each recorded step measures one group of layers in turn, see _stats) of each
slot's mean of its last SLOT_WINDOW costs, each clipped at CLIP x the slot's median, so a slot
that is dear by design counts at its share. A mean, not a median, because p is a long step's
time: on a machine with more runnable threads than cores the scheduler stretches p by its
average share of time slices, and the hooks, a few ms each, by the same factor only on average
(a few calls take a whole slice more, most none: a median of them is the unstretched cost, which
halved the overhead the watch benchmark's transformer measured at a load of 3.5 on 2 cores); the
clip keeps one long stall from counting in full. The cost per step is the undisturbed cost: c is the lower quartile of the last
STEP_WINDOW // 2 recorded steps (on a machine with more runnable threads than cores, half of a
tiny model's hook calls can be stretched by the scheduler), u the median of as many others.

Only two thirds of the budget go to what these clocks measure (RESERVE): the measured costs of
recording and sketches together are kept within usable(budget), and the last third is kept for what
no hook can time: the allocator returning freed memory in the user's own calls (zero_grad() 0.8-2 ms
slower in 2 of 3 phase-timed runs of the watch benchmark's CNN), caches the gradient reads evict, the
other ranks' waits under FSDP. On that benchmark the total exceeded the hooks' own measure by up to
about a point of 3% (the MLP 2.2% measured against +3.3%; under FSDP2, recording every step, 2.3%
against +2.7% phase by phase, without HTTP).

Both c's include the shipping thread's CPU time per record (`shipping`, from _shipper: msgpack,
HTTP, the findings poll): it runs in the training process, under its GIL, and on a machine with
no spare core it takes the training thread's CPU, so the watch benchmark charges it too.
"""

from __future__ import annotations

import math
from collections import deque

WARMUP_STEPS = 5  # the first steps (allocator warm-up, lazy optimizer state, compilation) are not timed
MIN_COST = 5e-4  # seconds per optimizer step that are never throttled, whatever the ratio
MAX_FACTOR = 64  # the stride is at most MAX_FACTOR x every
AIM = 0.75  # a new stride aims at AIM x the budget (or AIM x MIN_COST) ...
LOWER = 0.5  # ... and is lowered again only below LOWER x the budget (or LOWER x MIN_COST)
STEP_WINDOW = 32
SLOT_WINDOW = 3
CLIP = 4.0  # a recorded step's cost counts for c's mean at most CLIP x its slot's median
RESERVE = 1 / 3  # of the budget, kept for costs no hook can time (see above)


def usable(budget: float | None) -> float | None:
    """The part of `budget` that the measured costs (recording and sketches together) may take."""
    return budget * (1 - RESERVE) if budget else None


def _median(values: deque[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _clipped_mean(values: deque[float]) -> float:
    cap = CLIP * _median(values)
    return sum(min(value, cap) for value in values) / len(values)


def _lower_quartile(values: deque[float]) -> float:
    return sorted(values)[(len(values) - 1) // 4]


class Budget:
    """The effective recording stride of one watch() handle, from its measured cost."""

    def __init__(self, budget: float | None, every: int, slots: int) -> None:
        self.budget = budget or None
        self.every = every
        self.stride = every
        self.throttled = False  # whether the stride has ever been raised
        self._slots: list[deque[float]] = [deque(maxlen=SLOT_WINDOW) for _ in range(max(1, slots))]
        self._recorded: deque[float] = deque(maxlen=STEP_WINDOW // 2)
        self._idle: deque[float] = deque(maxlen=STEP_WINDOW // 2)
        self._idle_ratio: deque[float] = deque(maxlen=STEP_WINDOW // 2)
        self._plain: deque[float] = deque(maxlen=STEP_WINDOW)
        self._steps = 0
        self._last: float | None = None
        # c (mean over slots), c (lower quartile), u, u / p (median of each idle step's ratio), p
        self._estimate: tuple[float, float, float, float, float] | None = None
        self.shipping = 0.0  # CPU seconds the shipping thread spends per recorded step (set by the handle)

    @property
    def overhead(self) -> float | None:
        """The measured cost at the current stride, as a fraction of the plain step time (None until measured)."""
        return None if self._estimate is None else self.ratio(self.stride)

    @property
    def cost(self) -> float | None:
        """Seconds watch() spends per recorded step, shipping included (None until measured)."""
        return None if self._estimate is None else self._measured()[0]

    @property
    def step_time(self) -> float | None:
        """The plain step time in seconds, without watch()'s cost (None until measured)."""
        return None if self._estimate is None else self._estimate[4]

    def step(self, now: float, cost: float, slot: int | None) -> None:
        """An optimizer step ended at `now` (perf_counter), watch() spent `cost` s in it; `slot`: its sample slot if recorded."""
        last, self._last = self._last, now
        self._steps += 1
        if last is None or self._steps <= WARMUP_STEPS:
            return
        plain = max(now - last - cost, 1e-9)
        self._plain.append(plain)
        if slot is None:
            self._idle.append(cost)
            self._idle_ratio.append(cost / plain)
            return
        self._slots[slot % len(self._slots)].append(cost)
        self._recorded.append(cost)
        if len(self._plain) < 8 or any(len(times) < 2 for times in self._slots):
            return
        mean = sum(map(_clipped_mean, self._slots)) / len(self._slots)
        idle, idle_ratio = (_median(self._idle), _median(self._idle_ratio)) if self._idle else (0.0, 0.0)
        self._estimate = (mean, _lower_quartile(self._recorded), idle, idle_ratio, _median(self._plain))
        limit = usable(self.budget)
        if limit is not None:
            self._decide(limit)

    def _measured(self) -> tuple[float, float, float, float, float]:
        """The estimates, with the shipping thread's CPU time per record added to both costs of a recorded step."""
        if self._estimate is None:
            raise RuntimeError("no measurement yet")
        mean, quartile, idle, idle_ratio, plain = self._estimate
        return mean + self.shipping, quartile + self.shipping, idle, idle_ratio, plain

    def ratio(self, stride: int) -> float:
        """The overhead a given stride would have, from the current estimates (call once measured)."""
        mean, _, _, idle_ratio, plain = self._measured()
        return (mean / plain + (stride - 1) * idle_ratio) / stride

    def _per_step(self, stride: int) -> float:
        _, quartile, idle, _, _ = self._measured()
        return (quartile + (stride - 1) * idle) / stride

    def _decide(self, budget: float) -> None:
        stride = self.stride
        over = self.ratio(stride) > budget and self._per_step(stride) > MIN_COST
        under = self.ratio(stride) < LOWER * budget or self._per_step(stride) < LOWER * MIN_COST
        if over:
            self.stride = max(stride, self._aim(budget))
            self.throttled = self.throttled or self.stride > stride
        elif under and stride > self.every:
            self.stride = min(stride, self._aim(budget))

    def _aim(self, budget: float) -> int:
        """The smallest stride (a multiple of every, at most MAX_FACTOR x every) within AIM of the budget or floor."""
        mean, quartile, idle, idle_ratio, plain = self._measured()
        # overhead(s) <= T  <=>  s >= (c/p - u/p) / (T - u/p), when T > u/p (else no stride is enough)
        needed = min(
            _least(mean / plain - idle_ratio, AIM * budget - idle_ratio),
            _least(quartile - idle, AIM * MIN_COST - idle),
        )
        factor = max(1, min(MAX_FACTOR, math.ceil(needed / self.every - 1e-9))) if math.isfinite(needed) else MAX_FACTOR
        return factor * self.every


def _least(numerator: float, denominator: float) -> float:
    """The least s with numerator / s <= denominator (inf when none)."""
    if numerator <= 0:
        return 1.0
    return numerator / denominator if denominator > 0 else math.inf
