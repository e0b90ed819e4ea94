"""The one-fit tables' schedules (benchmarks/watch_callbacks.py): a watched fit's recording paused, or its watch
detached, in alternate rounds."""

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

    `handle()` is the callback's watch (None before the fit starts it). `lead`: untimed steps after each switch,
    before the round's timer starts (0 here: pause() and resume() take effect at once).
    """

    def __init__(
        self,
        warmup: int,
        rounds: int,
        round_seconds: float,
        charge: Callable[[], float],
        handle: Callable[[], Any],
        lead: int = 0,
    ) -> None:
        if warmup < 2:
            raise ValueError("the warm-up needs 2 steps at least: its step time sizes the rounds")
        self.warmup, self.rounds, self.round_seconds, self.charge = warmup, rounds, round_seconds, charge
        self.handle, self.lead = handle, lead
        self.recording = [(r % 4) in (0, 3) for r in range(rounds)]  # ABBA: recording, paused, paused, recording
        self.times: dict[bool, list[float]] = {True: [], False: []}  # seconds per step, per round
        self.lengths: list[int] = []  # timed steps per round
        self.strides: list[int] = []  # the stride at each recording round's timed start
        self._step_time = 0.0  # the median step at the end of the warm-up
        self._stamps: list[float] = []
        self._round = -1
        self._leading = 0  # untimed steps left before this round's timer starts
        self._count = 0
        self._start = 0.0

    def tick(self) -> bool:
        """A batch starts: end the round when due (timed, shipping charged), switch; True once all rounds are done."""
        now = time.perf_counter()
        if self._round < 0:
            self._stamps.append(now)
            if len(self._stamps) < self.warmup:
                return False
            recent = self._stamps[-11:]  # the last (at most) 10 warm-up steps
            self._step_time = max(statistics.median(b - a for a, b in zip(recent[:-1], recent[1:], strict=True)), 1e-9)
        elif self._leading:
            self._leading -= 1
            if not self._leading:  # this batch is the timed part's first
                self._start_timing()
            return False
        elif self._count < self.lengths[-1]:
            self._count += 1
            return False
        else:
            recording = self.recording[self._round]
            charged = self.charge() if recording else 0.0
            self.times[recording].append((now - self._start + charged) / self.lengths[-1])
        self._round += 1
        if self._round >= self.rounds:
            self._end()
            return True
        self._switch(self.recording[self._round])
        self._leading = self.lead
        if not self._leading:
            self._start_timing()
        return False

    def _switch(self, recording: bool) -> None:
        """Round `recording` or not begins."""
        watch = self.handle()
        (watch.resume if recording else watch.pause)()

    def _end(self) -> None:
        """The rounds are over: the fit ends recording, as a user's would."""
        self.handle().resume()

    def _start_timing(self) -> None:
        """The round's timed part begins at this batch start: whole strides of a recording round's stride."""
        recording = self.recording[self._round]
        if recording:
            self.strides.append(int(self.handle().stride))
        stride = self._prepare_timing(recording)
        self.lengths.append(stride * max(1, round(self.round_seconds / (stride * self._step_time))))
        self._count = 1
        self._start = time.perf_counter()

    def _prepare_timing(self, recording: bool) -> int:
        """Ready the round for its timer; the stride it lasts whole multiples of: the handle's, paused or not."""
        return int(self.handle().stride)


class Attachment(Alternation):
    """One fit with a paused watch attached in alternate rounds (ABBA) and none in the others: what a watch costs
    beyond recording (its hooks on every step, the memory it holds, its idle shipping thread), which the paused
    rounds of an Alternation pay as well and so cannot show.

    An attached round opens a fresh watch (`attach()`: the callback's own set-up, default settings; the first round
    keeps the one the fit started with) that records through `lead` untimed steps, so it has settled its stride,
    allocated its buffers, taken its first distribution sketch and shipped; then it is flushed and paused, and the
    round is timed. A detached round follows `detach()` (close(): hooks removed, shipping thread ended, the handle
    dropped) and as many untimed steps. Set-up and close, which a fit pays once, fall in the lead-ins.
    """

    def __init__(
        self,
        warmup: int,
        rounds: int,
        round_seconds: float,
        charge: Callable[[], float],
        handle: Callable[[], Any],
        attach: Callable[[], None],
        detach: Callable[[], None],
        lead: int,
    ) -> None:
        if lead < 1:
            raise ValueError("a fresh watch needs untimed steps to settle and allocate: lead >= 1")
        super().__init__(warmup, rounds, round_seconds, charge, handle, lead)
        self.attach, self.detach = attach, detach

    def _switch(self, recording: bool) -> None:
        (self.attach if recording else self.detach)()

    def _prepare_timing(self, recording: bool) -> int:
        """An attached round's watch is flushed (outside the timer) and set aside; no round needs whole strides: 1."""
        if recording:
            self.charge()
            self._set_aside()
        return 1

    def _set_aside(self) -> None:
        """The attached watch's state in the timed steps: paused (an attached round after an attached one keeps it)."""
        self.handle().pause()


class AttachmentControl(Attachment):
    """The A/A of an Attachment: an attached round's fresh watch starts as there (set up, recording through the lead,
    flushed) but is closed before the timer, so no timed round has a watch. Whatever such rounds still read against
    detached ones is the schedule's own bias plus what a watch's passing leaves behind (where the fit's tensors are
    allocated next), not the cost of a watch that is there."""

    def _set_aside(self) -> None:
        """The attached watch is closed: its round's timed steps run with none, as a detached round's do."""
        self.detach()

    def _end(self) -> None:
        """The rounds are over, the last one's watch closed already: nothing to resume."""
