"""Per-layer runs of a condition (a zero gradient, no update), exact under re-chunking like the rest of rolling.py."""

from __future__ import annotations

from typing import Any

import numpy as np


class ColumnRuns:
    """Per-layer runs of a condition (e.g. a zero gradient), confirmed once long enough.

    A run starts at a layer's first measured point with the condition and ends at its next
    measured point without it. A run counts only if the layer had at least `active_min`
    measured points without the condition before it began (it had been learning), unless
    `need_active` is False (a condition that is a fault from the first point on).
    """

    def __init__(
        self,
        num_layers: int,
        confirm_n: int,
        min_span: int,
        active_min: int,
        state: dict[str, Any] | None,
        need_active: bool = True,
    ) -> None:
        self.confirm_n, self.min_span, self.active_min = confirm_n, min_span, active_min
        self.need_active = need_active
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

    def _feed_rows(
        self, steps: np.ndarray, hit: np.ndarray, miss: np.ndarray, cols: np.ndarray
    ) -> list[tuple[int, int, int]]:
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
                elig[new] = (active[new] >= self.active_min) | (not self.need_active)
            count[h] += 1
            last[h] = step
            ok = h & elig & ~conf & (count >= self.confirm_n) & (step - start >= self.min_span)
            if ok.any():
                conf[ok] = True
                events.extend((i, int(cols[j]), int(start[j])) for j in np.flatnonzero(ok).tolist())
        self.start[cols], self.last[cols], self.count[cols] = start, last, count
        self.eligible[cols], self.confirmed[cols], self.active[cols] = elig, conf, active
        return events

    def _feed_pure(self, steps: np.ndarray, hit: np.ndarray, cols: np.ndarray) -> list[tuple[int, int, int]]:
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
        self.eligible[cols[new]] = (self.active[cols[new]] >= self.active_min) | (not self.need_active)
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
