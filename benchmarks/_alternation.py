"""The one-fit table's schedule (benchmarks/watch_callbacks.py): a watched fit's recording paused in alternate rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


class Alternation:
    """One fit with the callback, its recording paused in alternate rounds (ABBA): what recording costs, on one
    model instance, so neither the instances' own speeds nor the arena they allocate from enter the estimate.

    After `warmup` steps (the stride settles), each round lasts a whole number of the strides in force at its start
    (the fewest that last `round_seconds`), so a recording round records as many steps as the stride does in steady
    state: resume() records the first step at once, then one per stride, and a recording round that follows one
    starts a stride after its last record. Paused rounds keep the hooks (counting steps, the idle path): the
    difference is recording, sketches and shipping; the idle hooks' cost is the handle's own measure, added apart.
    """

    def __init__(self, warmup: int, rounds: int, round_seconds: float, charge: Callable[[], float]) -> None:
        if warmup < 2:
            raise ValueError("the warm-up needs 2 steps at least: its step time sizes the rounds")
        self.warmup, self.rounds, self.round_seconds, self.charge = warmup, rounds, round_seconds, charge
        self.watch: Any = None  # the callback's handle, once the fit has started
        self.recording = [(r % 4) in (0, 3) for r in range(rounds)]  # ABBA: recording, paused, paused, recording
        self.times: dict[bool, list[float]] = {True: [], False: []}  # seconds per step, per round
        self.lengths: list[int] = []  # steps per round
        self.strides: list[int] = []  # the stride at each round's start
        self._step_time = 0.0  # the median step at the end of the warm-up
        self._stamps: list[float] = []
        self._round = -1
        self._count = 0
        self._start = 0.0

    def tick(self) -> bool:
        """A batch starts: end the round when due (timed, shipping charged), pause or resume; True once all are done."""
        now = time.perf_counter()
        if self._round < 0:
            self._stamps.append(now)
            if len(self._stamps) < self.warmup:
                return False
            recent = self._stamps[-11:]  # the last (at most) 10 warm-up steps
            self._step_time = max(statistics.median(b - a for a, b in zip(recent[:-1], recent[1:], strict=True)), 1e-9)
        elif self._count < self.lengths[-1]:
            self._count += 1
            return False
        else:
            recording = self.recording[self._round]
            charged = self.charge() if recording else 0.0
            self.times[recording].append((now - self._start + charged) / self.lengths[-1])
        self._round += 1
        if self._round >= self.rounds:
            self.watch.resume()
            return True
        (self.watch.resume if self.recording[self._round] else self.watch.pause)()
        stride = self.watch.stride
        self.strides.append(stride)
        self.lengths.append(stride * max(1, round(self.round_seconds / (stride * self._step_time))))
        self._count = 1
        self._start = time.perf_counter()
        return False
