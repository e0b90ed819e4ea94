"""loss_divergence's state: the best level of the loss, the noise there, the bar it sets, and the rises."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .rolling import MAD_TO_SIGMA, rolling_diff_sigma

# Reference: the best (lowest) rolling median of the loss over the last 9 logged steps (each loss counted as
# the stride it was logged at, and at least 3 losses: a median needs 3 to reject one outlier), and the
# minibatch noise sigma at that point. The noise is the smaller of 1.4826 MAD of the last 51 losses and the
# trend-blind 1.4826 MAD of their 50 first differences / sqrt 2: a window's spread counts the early fall
# of the loss as noise (more so the more steps a throttled client's 51 losses span), differences count a
# period-2 swing double; each is a fair sigma for iid noise. (A stride's level exists from the 3rd loss, the
# 51-loss spread from the 9th: in between, the MAD of the losses so far stands in, never a NaN that the
# stored state cannot hold.) A logged loss "exceeds" when it is above
# best + delta, delta being the largest of
#  - 4 sigma: a raw loss rarely sits 4 sigma high (heavy-tailed minibatch losses do it at a few %),
#  - the smaller of |best| (the loss doubled) and half of initial-best (half the progress lost):
#    either is a real setback, and the second still works for losses near or below zero,
#  - 0.1% of the loss scale, so round-off at convergence never counts.
# (Calibrated on healthy SGD runs whose minibatch loss swings 0.03-0.9 around a 0.15 level: the
# lucky 9-point minimum 0.065 with a 50% bar flagged them; noise-scaled bars do not.)
LEVEL_STEPS = 9
LEVEL_MIN_LOSSES = 3
NOISE_WINDOW = 51
NOISE_MIN_DIFFS = 8  # from the 9th loss, as the shared level and spread
Z_NOISE = 4.0
REL_RISE = 1.0
LOST_PROGRESS = 0.5
FLOOR = 1e-3


@dataclass
class LossPoint:
    """One finite logged loss in the confirmation window (stored as [step, exceeds, layers, loss, lr])."""

    step: int
    exceeds: bool  # above the bar set by the best level
    layers: list[int]  # the top gradient layers where its run of exceeding losses began ([] if it does not exceed)
    loss: float
    lr: float | None  # the lr of the update that produced it

    def to_json(self) -> list[Any]:
        """The positional list of state version 1."""
        return [self.step, self.exceeds, self.layers, self.loss, self.lr]

    @classmethod
    def from_json(cls, e: list[Any]) -> LossPoint:
        """Read what to_json() wrote."""
        return cls(int(e[0]), bool(e[1]), list(e[2]), e[3], e[4])


@dataclass
class Divergence:
    """A confirmed rise of the loss above its bar (or a non-finite loss)."""

    start: int
    last: int  # the last exceeding (or non-finite) step
    peak: float | None
    peak_step: int | None
    layers: list[int]
    nonfinite_step: int | None
    best: float | None  # the best level and what it set, when the rise began
    best_step: int | None
    threshold: float | None
    lr_at_best: float | None
    lr_at_start: float | None
    nonfinite: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON object."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Divergence:
        """Read what to_json() wrote."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class LossDivergenceState:
    """The best level so far, the confirmation window and the divergences."""

    initial: float | None = None  # the first level (rolling median)
    best: float | None = None  # the lowest one
    best_sigma: float = 0.0  # the spread of the last 51 losses there (state version 1's noise)
    best_step: int | None = None
    lr_at_best: float | None = None
    fifo: list[LossPoint] = field(default_factory=list)  # the last 10 finite logged losses (CONFIRM_N)
    run_start: int | None = None  # the first step of the current run of exceeding losses
    run_layers: list[int] = field(default_factory=list)
    open: Divergence | None = None
    closed: list[Divergence] = field(default_factory=list)
    lr: float | None = None  # the lr of the update that produced the last loss
    # added after state version 1 (absent: None and [], so a restored run uses best_sigma until its next best)
    best_diff_sigma: float | None = None  # the trend-blind noise at the best level
    recent: list[list[float]] = field(default_factory=list)  # the last 52 finite logged losses, as [loss, stride]

    def to_json(self) -> dict[str, Any]:
        """JSON object (the keys of state version 1, and best_diff_sigma and recent)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["fifo"] = [e.to_json() for e in self.fifo]
        out["open"] = self.open.to_json() if self.open is not None else None
        out["closed"] = [ep.to_json() for ep in self.closed]
        out["run_layers"] = list(self.run_layers)
        out["recent"] = [list(e) for e in self.recent]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> LossDivergenceState:
        """Read what to_json() wrote (None: a fresh state)."""
        if not d:
            return cls()
        st = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        st.fifo = [LossPoint.from_json(e) for e in d.get("fifo", [])]
        st.open = Divergence.from_json(d["open"]) if d.get("open") is not None else None
        st.closed = [Divergence.from_json(ep) for ep in d.get("closed", [])]
        return st

    def delta(self) -> float:
        """How far above the best level a loss must be to exceed (see the constants)."""
        best, initial = self.best, self.initial
        assert best is not None and initial is not None
        setback = min(REL_RISE * abs(best), LOST_PROGRESS * (initial - best))
        return max(Z_NOISE * self.noise(), setback, FLOOR * max(abs(initial), abs(best)), 1e-12)

    def noise(self) -> float:
        """The minibatch noise at the best level: the smaller of the two estimates (see the constants)."""
        return self.best_sigma if self.best_diff_sigma is None else min(self.best_sigma, self.best_diff_sigma)

    def remember(self, x: float, stride: int) -> None:
        """Keep a finite logged loss for the level and noise windows."""
        self.recent.append([x, stride])
        del self.recent[: -(NOISE_WINDOW + 1)]

    def diff_sigmas(self, new: np.ndarray) -> np.ndarray:
        """The trend-blind noise before each of a chunk's finite losses (NaN until 8 differences)."""
        prev = np.array([e[0] for e in self.recent], dtype=np.float64)
        return rolling_diff_sigma(prev, new, NOISE_WINDOW - 1, min_count=NOISE_MIN_DIFFS)

    def early_sigma(self) -> float:
        """1.4826 MAD of the losses so far, for a level set from fewer than 9 (a stride's): never NaN in the state."""
        losses = np.array([e[0] for e in self.recent[-NOISE_WINDOW:]], dtype=np.float64)
        if not len(losses):
            return 0.0
        return MAD_TO_SIGMA * float(np.median(np.abs(losses - np.median(losses))))

    def level(self, shared_median: float) -> float:
        """Median of the losses of the last LEVEL_STEPS logged steps (the newest remembered loss is the current).

        Losses from before a restored state version 1 were logged at stride 1; when the window holds 9 losses
        it is the evaluator's shared 9-loss median, which a restored state continues exactly.
        """
        covered, n = 0, 0
        while n < LEVEL_STEPS and (covered < LEVEL_STEPS or n < LEVEL_MIN_LOSSES):
            covered += int(self.recent[-1 - n][1]) if n < len(self.recent) else 1
            n += 1
        if n == LEVEL_STEPS:
            return shared_median
        return float(np.median([e[0] for e in self.recent[-n:]])) if n <= len(self.recent) else math.nan
