"""Streaming building blocks that give the same answer however the stream is chunked.

Every helper here is exact under re-chunking: windows are re-formed from the same values
(medians depend only on the set of values), counts are integers, and anything sequential is
fed one point at a time. That is what lets a restored evaluator continue bit-for-bit.
"""

from __future__ import annotations

import math
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
        self.s: dict[str, Any] = state or {"run_n": 0, "run_start": None, "off_n": 0, "open": None, "closed": []}

    def feed(self, step: int, cond: bool, value: float, start: int | None = None) -> str | None:
        """Feed one point; returns 'open', 'on', 'close' or None. `start` overrides where a new run begins."""
        s = self.s
        if cond:
            if s["run_n"] == 0:
                s["run_start"] = int(step if start is None else start)
            s["run_n"] += 1
            s["off_n"] = 0
            ep = s["open"]
            if ep is None:
                if s["run_n"] >= self.confirm_n and step - s["run_start"] >= self.min_span:
                    s["open"] = {"start": s["run_start"], "last": int(step), "peak": value, "peak_step": int(step)}
                    s["open"]["n"] = s["run_n"]
                    return "open"
                return None
            ep["last"] = int(step)
            ep["n"] += 1
            if self.sign * (value - ep["peak"]) > 0:
                ep["peak"], ep["peak_step"] = value, int(step)
            return "on"
        s["run_n"] = 0
        if s["open"] is not None:
            s["off_n"] += 1
            if s["off_n"] >= self.release_n:
                self._close()
                return "close"
        return None

    def _close(self) -> None:
        s = self.s
        ep, s["open"], s["off_n"] = s["open"], None, 0
        closed = s["closed"]
        if len(closed) < MAX_EPISODES - 1:
            closed.append(ep)
            return
        last = closed[-1]  # keep the first few apart; merge the rest into the last one kept
        last["last"] = ep["last"]
        last["n"] += ep["n"]
        last["merged"] = last.get("merged", 0) + 1
        if self.sign * (ep["peak"] - last["peak"]) > 0:
            last["peak"], last["peak_step"] = ep["peak"], ep["peak_step"]

    @property
    def open(self) -> dict[str, Any] | None:
        """The ongoing episode, if any."""
        return self.s["open"]

    @property
    def closed(self) -> list[dict[str, Any]]:
        """Finished episodes, oldest first."""
        return self.s["closed"]

    def state(self) -> dict[str, Any]:
        """JSON state (episode values must be finite floats)."""
        return self.s


# --- per-layer runs of a condition -------------------------------------------------------------


class ColumnRuns:
    """Per-layer runs of a condition (e.g. a zero gradient), confirmed once long enough.

    A run starts at a layer's first measured point with the condition and ends at its next
    measured point without it. A run counts only if the layer had at least `active_min`
    measured points without the condition before it began (it had been learning).
    """

    def __init__(
        self, num_layers: int, confirm_n: int, min_span: int, active_min: int, state: dict[str, Any] | None
    ) -> None:
        self.confirm_n, self.min_span, self.active_min = confirm_n, min_span, active_min
        st = state or {}
        L = num_layers
        self.start = np.array(st.get("start", [-1] * L), dtype=np.int64)
        self.last = np.array(st.get("last", [-1] * L), dtype=np.int64)
        self.count = np.array(st.get("count", [0] * L), dtype=np.int64)
        self.eligible = np.array(st.get("eligible", [False] * L), dtype=bool)
        self.confirmed = np.array(st.get("confirmed", [False] * L), dtype=bool)
        self.active = np.array(st.get("active", [0] * L), dtype=np.int64)
        self._ended: list[tuple[int, int, int, int]] = []

    def feed(
        self, steps: np.ndarray, hit: np.ndarray, miss: np.ndarray
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
        """Feed (n, L) masks of measured points with (hit) and without (miss) the condition.

        Returns the runs confirmed in this chunk as (layer, start) and the confirmed runs that ended as
        (layer, start, last). Python work is per row only for layers with both hits and misses in the chunk.
        """
        cols = np.flatnonzero(hit.any(axis=0) | (self.start >= 0))
        quiet = np.ones(hit.shape[1], dtype=bool)
        quiet[cols] = False
        misses = miss.sum(axis=0)
        self.active[quiet] = np.minimum(self.active[quiet] + misses[quiet], self.active_min)
        mixed = cols[misses[cols] > 0]
        pure = cols[misses[cols] == 0]  # only hits (e.g. a layer frozen all chunk long): no per-row work
        confirmed = self._feed_rows(steps, hit, miss, mixed) + self._feed_pure(steps, hit, pure)
        confirmed.sort()  # (row, layer): the order the events happened in, however the stream is chunked
        ended = sorted(self._ended)
        self._ended = []
        return [(c, st) for _, c, st in confirmed], [(c, st, la) for _, c, st, la in ended]

    def _feed_rows(self, steps: np.ndarray, hit: np.ndarray, miss: np.ndarray, cols: np.ndarray) -> list:
        """Row by row, for layers whose runs may end in this chunk."""
        events: list[tuple[int, int, int]] = []
        if not len(cols):
            return events
        hit, miss = hit[:, cols], miss[:, cols]
        start, last, count = self.start[cols], self.last[cols], self.count[cols]
        elig, conf, active = self.eligible[cols], self.confirmed[cols], self.active[cols]
        for i in np.flatnonzero((hit | miss).any(axis=1)).tolist():
            step = int(steps[i])
            h, m = hit[i], miss[i]
            stop = m & (start >= 0)
            if stop.any():
                for j in np.flatnonzero(stop & conf).tolist():
                    self._ended.append((i, int(cols[j]), int(start[j]), int(last[j])))
                start[stop], count[stop], conf[stop], elig[stop] = -1, 0, False, False
            active[m] = np.minimum(active[m] + 1, self.active_min)
            new = h & (start < 0)
            if new.any():
                start[new] = step
                elig[new] = active[new] >= self.active_min
            count[h] += 1
            last[h] = step
            ok = h & elig & ~conf & (count >= self.confirm_n) & (step - start >= self.min_span)
            if ok.any():
                conf[ok] = True
                events.extend((i, int(cols[j]), int(start[j])) for j in np.flatnonzero(ok).tolist())
        self.start[cols], self.last[cols], self.count[cols] = start, last, count
        self.eligible[cols], self.confirmed[cols], self.active[cols] = elig, conf, active
        return events

    def _feed_pure(self, steps: np.ndarray, hit: np.ndarray, cols: np.ndarray) -> list:
        """Vectorised, for layers with hits and no misses: runs only start or grow."""
        events: list[tuple[int, int, int]] = []
        hit = hit[:, cols]
        has = hit.any(axis=0)
        if not has.any():
            return events
        cols, hit = cols[has], hit[:, has]
        first = hit.argmax(axis=0)
        new = self.start[cols] < 0
        self.start[cols[new]] = steps[first[new]]
        self.eligible[cols[new]] = self.active[cols[new]] >= self.active_min
        cum = self.count[cols] + np.cumsum(hit, axis=0)
        ok = (
            hit
            & (self.eligible[cols] & ~self.confirmed[cols])[None, :]
            & (cum >= self.confirm_n)
            & ((steps[:, None] - self.start[cols][None, :]) >= self.min_span)
        )
        fired = ok.any(axis=0)
        rows = ok.argmax(axis=0)
        for j in np.flatnonzero(fired).tolist():
            events.append((int(rows[j]), int(cols[j]), int(self.start[cols[j]])))
        self.confirmed[cols[fired]] = True
        self.count[cols] = cum[-1]
        self.last[cols] = steps[len(hit) - 1 - hit[::-1].argmax(axis=0)]
        return events

    def state(self) -> dict[str, Any]:
        """JSON state."""
        return {
            "start": self.start.tolist(),
            "last": self.last.tolist(),
            "count": self.count.tolist(),
            "eligible": self.eligible.tolist(),
            "confirmed": self.confirmed.tolist(),
            "active": self.active.tolist(),
        }
