"""Streaming building blocks that give the same answer however the stream is chunked.

Every helper here is exact under re-chunking: windows are re-formed from the same values
(medians depend only on the set of values), counts are integers, and anything sequential is
fed one point at a time. That is what lets a restored evaluator continue bit-for-bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# Rousseeuw & Croux 1993: 1.4826 * MAD estimates the standard deviation of a normal sample.
MAD_TO_SIGMA = 1.4826


# --- JSON-safe numbers -------------------------------------------------------------------------


def enc(x: float | None) -> float | str | None:
    """Encode a float for json.dumps(allow_nan=False): non-finite values become strings."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def dec(x: float | str | None) -> float:
    """Decode what enc() wrote (None reads as NaN)."""
    if x is None:
        return math.nan
    return float(x)


def enc_array(a: np.ndarray) -> list[float | str | None]:
    """Encode a float array as a JSON list."""
    return [enc(v) for v in a.tolist()]


def dec_array(v: list[Any]) -> np.ndarray:
    """Decode enc_array() output into a float64 array."""
    return np.array([dec(x) for x in v], dtype=np.float64)


def opt_float(x: float) -> float | None:
    """A finite float or None, for evidence and summaries."""
    return float(x) if x is not None and math.isfinite(x) else None


def last_positive(values: np.ndarray, carry: np.ndarray) -> np.ndarray:
    """Per column, the last finite positive value of an (n, L) array, else `carry`."""
    ok = (values > 0) & (values < np.inf)
    if not len(values):
        return carry
    back = ok[::-1].argmax(axis=0)
    seen = ok.any(axis=0)
    out = carry.copy()
    cols = np.flatnonzero(seen)
    out[cols] = values[len(values) - 1 - back[cols], cols]
    return out


# --- rolling windows ---------------------------------------------------------------------------


def rolling_median_mad(
    prev: np.ndarray, new: np.ndarray, window: int, include_current: bool, min_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD of the window before (or ending at) each new value; NaN until min_count values.

    `prev` holds the values seen before `new` (only its last `window` are used).
    """
    prev = prev[-window:]
    seq = np.concatenate([prev, new])
    n = len(new)
    med = np.full(n, np.nan)
    mad = np.full(n, np.nan)
    if n == 0:
        return med, mad
    ends = len(prev) + np.arange(n) + (1 if include_current else 0)
    starts = np.maximum(ends - window, 0)
    full = (ends - starts) == window
    if full.any():
        windows = sliding_window_view(seq, window)[starts[full]]
        m = np.median(windows, axis=1)
        med[full] = m
        mad[full] = np.median(np.abs(windows - m[:, None]), axis=1)
    for i in np.flatnonzero(~full & ((ends - starts) >= min_count)):
        w = seq[starts[i] : ends[i]]
        m = float(np.median(w))
        med[i] = m
        mad[i] = float(np.median(np.abs(w - m)))
    return med, mad


def rolling_diff_sigma(prev: np.ndarray, new: np.ndarray, window: int, min_count: int) -> np.ndarray:
    """Robust noise before each new value, blind to trends: 1.4826 MAD of the last `window` first differences / sqrt 2.

    A window's own spread counts a trend (the early-training fall of the loss or the gradient norm) as
    noise; differences of neighbours cancel a trend that is smooth over the window (a constant slope is
    the differences' median, which the MAD subtracts). `prev` holds the values before `new`.
    """
    seq = np.concatenate([prev[-(window + 1) :], new])
    diffs = np.diff(seq)
    start = len(seq) - len(new)  # new[i] is seq[start + i]; its difference with the one before is diffs[start + i - 1]
    before = max(start - 1, 0)  # the differences that end before new[0]
    _, mad = rolling_median_mad(
        diffs[:before], diffs[before : before + len(new)], window, include_current=False, min_count=min_count
    )
    if start == 0 and len(new):  # the very first value has no difference of its own: it has no noise estimate yet
        mad = np.concatenate([[np.nan], mad])
    sigma: np.ndarray = MAD_TO_SIGMA * mad / math.sqrt(2.0)
    return sigma


class LogHistogram:
    """Quantiles of a positive quantity in O(1) state: fixed log-spaced bins, ~6% resolution."""

    LOG_LO = -12.0  # 1e-12 .. 1e12 covers any gradient norm that is still finite in practice
    PER_DECADE = 40  # 10**(1/40) = 1.059: a quantile is known to within ±3%
    BINS = 24 * PER_DECADE

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.counts: dict[int, int] = {int(k): int(v) for k, v in (state or {}).get("counts", {}).items()}
        self.total = int((state or {}).get("total", 0))

    def add(self, values: np.ndarray) -> None:
        """Count positive finite values."""
        v = values[np.isfinite(values) & (values > 0)]
        if not len(v):
            return
        idx = np.clip(np.floor((np.log10(v) - self.LOG_LO) * self.PER_DECADE), 0, self.BINS - 1).astype(np.int64)
        keys, counts = np.unique(idx, return_counts=True)
        for k, c in zip(keys.tolist(), counts.tolist(), strict=True):
            self.counts[k] = self.counts.get(k, 0) + c
        self.total += int(len(v))

    def quantile(self, q: float) -> float | None:
        """The q-quantile as the geometric centre of its bin; None before any value."""
        if not self.total:
            return None
        need = q * self.total
        seen = 0
        for k in sorted(self.counts):
            seen += self.counts[k]
            if seen >= need:
                return float(10 ** (self.LOG_LO + (k + 0.5) / self.PER_DECADE))
        return None  # pragma: no cover - seen reaches total

    def state(self) -> dict[str, Any]:
        """JSON state."""
        return {"counts": {str(k): v for k, v in sorted(self.counts.items())}, "total": self.total}


# --- episodes of a scalar condition --------------------------------------------------------------

MAX_EPISODES = 5  # findings per rule stay bounded: later episodes merge into the last one kept


@dataclass
class Episode:
    """One episode of a condition: its first step, last true step, worst value and the step of it."""

    start: int
    last: int
    peak: float
    peak_step: int
    n: int  # points with the condition true
    merged: int = 0  # later episodes folded into this one (MAX_EPISODES)
    layers: list[int] | None = None  # the layers a rule flags for it, where it does

    def to_json(self) -> dict[str, Any]:
        """JSON object (the keys written since state version 1; merged/layers only when set)."""
        out: dict[str, Any] = {
            "start": self.start,
            "last": self.last,
            "peak": self.peak,
            "peak_step": self.peak_step,
            "n": self.n,
        }
        if self.merged:
            out["merged"] = self.merged
        if self.layers is not None:
            out["layers"] = self.layers
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Episode:
        """Read what to_json() wrote."""
        return cls(d["start"], d["last"], d["peak"], d["peak_step"], d["n"], d.get("merged", 0), d.get("layers"))


@dataclass
class EpisodesState:
    """The current run of true points, the ongoing episode and the finished ones."""

    run_n: int = 0  # logged steps (points, each weighted by its stride) of the current run with the condition true
    run_start: int | None = None  # where that run began
    off_n: int = 0  # logged steps of consecutive false points while an episode is open
    open: Episode | None = None
    closed: list[Episode] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON object."""
        return {
            "run_n": self.run_n,
            "run_start": self.run_start,
            "off_n": self.off_n,
            "open": self.open.to_json() if self.open is not None else None,
            "closed": [ep.to_json() for ep in self.closed],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> EpisodesState:
        """Read what to_json() wrote (None: a fresh state)."""
        if not d:
            return cls()
        opened = Episode.from_json(d["open"]) if d.get("open") is not None else None
        closed = [Episode.from_json(ep) for ep in d.get("closed", [])]
        return cls(int(d.get("run_n", 0)), d.get("run_start"), int(d.get("off_n", 0)), opened, closed)


class Episodes:
    """Open an episode when a condition holds for confirm_n points (and min_span steps); close it after release_n misses.

    Each episode records its first step, its last true step, its worst value and the step of it.
    """

    def __init__(
        self,
        confirm_n: int,
        release_n: int,
        min_span: int = 0,
        higher_is_worse: bool = True,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.confirm_n = confirm_n
        self.release_n = release_n
        self.min_span = min_span
        self.sign = 1.0 if higher_is_worse else -1.0
        self.s = EpisodesState.from_json(state)

    def feed(self, step: int, cond: bool, value: float, start: int | None = None, weight: int = 1) -> str | None:
        """Feed one point; returns 'open', 'on', 'close' or None. `start` overrides where a new run begins.

        `weight` is the logged steps the point stands for (the client's stride): confirm_n and release_n
        count logged steps, so a run recorded one step in 10 confirms and releases at the same steps.
        """
        if cond:
            return self._on(int(step), value, start, weight)
        s = self.s
        s.run_n = 0
        if s.open is not None:
            s.off_n += weight
            if s.off_n >= self.release_n:
                self._close()
                return "close"
        return None

    def _on(self, step: int, value: float, start: int | None, weight: int) -> str | None:
        s = self.s
        if s.run_n == 0:
            s.run_start = int(step if start is None else start)
        s.run_n += weight
        s.off_n = 0
        ep = s.open
        if ep is None:
            assert s.run_start is not None
            if s.run_n >= self.confirm_n and step - s.run_start >= self.min_span:
                s.open = Episode(s.run_start, step, value, step, s.run_n)
                return "open"
            return None
        ep.last = step
        ep.n += 1
        if self.sign * (value - ep.peak) > 0:
            ep.peak, ep.peak_step = value, step
        return "on"

    def _close(self) -> None:
        s = self.s
        ep, s.open, s.off_n = s.open, None, 0
        assert ep is not None
        closed = s.closed
        if len(closed) < MAX_EPISODES - 1:
            closed.append(ep)
            return
        last = closed[-1]  # keep the first few apart; merge the rest into the last one kept
        last.last = ep.last
        last.n += ep.n
        last.merged += 1
        if self.sign * (ep.peak - last.peak) > 0:
            last.peak, last.peak_step = ep.peak, ep.peak_step

    @property
    def open(self) -> Episode | None:
        """The ongoing episode, if any."""
        return self.s.open

    @property
    def closed(self) -> list[Episode]:
        """Finished episodes, oldest first."""
        return self.s.closed

    @property
    def idle(self) -> bool:
        """No episode open and no run of true points under way: a false point changes nothing."""
        return self.s.open is None and self.s.run_n == 0

    def episodes(self) -> list[Episode]:
        """Finished episodes, then the ongoing one."""
        return self.s.closed + ([self.s.open] if self.s.open is not None else [])

    def state(self) -> dict[str, Any]:
        """JSON state (episode values must be finite floats)."""
        return self.s.to_json()
