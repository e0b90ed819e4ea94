"""gradient_spike: the global gradient norm jumps far above its robust recent level (a "cliff")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from gradhealth.report import Finding

from .chunk import ChunkView
from .common import RunContext, clip_remediation, fmt, lower_lr_remediation, merged_note, span, steps_where
from .rolling import MAD_TO_SIGMA, Episode, Episodes, LogHistogram, dec_array, enc_array, rolling_median_mad

RULE_ID = "gradient_spike"

# The level is the median of log(global norm) over the previous 51 finite steps (odd, so it is one
# logged norm: exp(level) is the rolling median of the norm itself), known once 20 are in.
WINDOW = 51
MIN_HISTORY = 20
# A spike must clear both bars: 5x the rolling median and 6 robust standard deviations of log-norm
# above it (6 sigma is ~1e-9 for Gaussian noise; heavy tails are what trips it). On 24 healthy
# calibration runs (MLP, CNN, GRU, tanh-MLP x SGD-momentum/Adam x 3 seeds, 400 steps) the largest
# ratio was 6.1x (at z 4.0) and the largest z 5.3: neither bar alone is safe, both together are.
MIN_RATIO = 5.0
MIN_Z = 6.0
# Spikes less than 25 logged steps apart are one episode (a burst, or a divergence still climbing);
# logged steps count each record at its stride (docs/runs.md), not one each.
RELEASE = 25
QUANTILE = 0.9  # clip at the 90th percentile: nine steps in ten pass unclipped
# The clip norm comes from the calm part of the run: the norms logged before the first spike, the
# first NaN/Inf, or the first norm CLIMB times its rolling median (a divergence climbing too smoothly
# to spike). A quantile over all norms includes the exploded ones (1e10 after a blow-up) and never binds.
CLIMB = 10.0


def top_contributors(grad: np.ndarray, share: float = 0.8, limit: int = 10) -> list[int]:
    """The fewest layers whose squared gradient norms make up `share` of the global norm squared."""
    sq = np.where(np.isfinite(grad), grad, 0.0) ** 2
    order = np.argsort(-sq, kind="stable")
    cum = np.cumsum(sq[order])
    if not len(cum) or cum[-1] <= 0:
        return []
    k = int(np.searchsorted(cum, share * cum[-1])) + 1
    return sorted(order[: min(k, limit)].tolist())


@dataclass
class SpikePeak:
    """What a spike episode's worst step looked like."""

    norm: float  # the global gradient norm at the peak
    level: float  # its rolling median just before
    z: float | None  # robust z of log(norm) against the window
    layers: list[int]  # the layers that made up most of it

    def to_json(self) -> dict[str, Any]:
        """JSON object."""
        return {"norm": self.norm, "level": self.level, "z": self.z, "layers": self.layers}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SpikePeak:
        """Read what to_json() wrote."""
        return cls(d["norm"], d["level"], d.get("z"), d.get("layers", []))


@dataclass
class GradientSpikeState:
    """The last 51 log global norms, histograms of all and of the calm norms, the episodes and their peaks."""

    hist: np.ndarray
    quant: LogHistogram
    episodes: Episodes
    peaks: dict[str, SpikePeak]  # keyed by the episode's start step (a JSON key: a string)
    calm: LogHistogram  # the norms before the run first spiked, overflowed or climbed CLIMB x
    calm_done: bool  # calm has ended (or is unknown: a state stored before it existed)

    @classmethod
    def from_json(cls, st: dict[str, Any] | None) -> GradientSpikeState:
        """Read what to_json() wrote (None: a fresh state)."""
        st = st or {}
        return cls(
            hist=dec_array(st.get("hist", [])),
            quant=LogHistogram(st.get("quant")),
            episodes=Episodes(1, RELEASE, higher_is_worse=True, state=st.get("episodes")),
            peaks={k: SpikePeak.from_json(v) for k, v in st.get("extra", {}).items()},
            calm=LogHistogram(st.get("calm")),
            # a state stored before the calm histogram existed has seen norms it never kept: unknown, not calm
            calm_done=bool(st.get("calm_done", "calm" not in st and len(st.get("hist", [])) > 0)),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON object (the keys of state version 1)."""
        return {
            "hist": enc_array(self.hist),
            "quant": self.quant.state(),
            "episodes": self.episodes.state(),
            "extra": {k: v.to_json() for k, v in self.peaks.items()},
            "calm": self.calm.state(),
            "calm_done": self.calm_done,
        }


class GradientSpikeRule:
    """Rolling median/MAD of log global norm; spikes above max(5x, 6 sigma) open an episode."""

    rule_id: ClassVar[str] = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.st = GradientSpikeState.from_json(state)

    def update(self, v: ChunkView) -> None:
        """Vectorised rolling level per chunk, then an O(1) episode step per finite norm."""
        st = self.st
        norms = v.global_norm
        ok = np.isfinite(norms) & (norms > 0)
        st.quant.add(norms[ok])
        x = np.log(norms[ok])
        if not len(x):
            if not st.calm_done:  # a chunk of only NaN/Inf (or zero) norms ends calm too
                self._feed_calm(norms, np.flatnonzero(ok), np.zeros(0, bool), np.zeros(0, bool))
            return
        level, mad = rolling_median_mad(st.hist, x, WINDOW, include_current=False, min_count=MIN_HISTORY)
        rows = np.flatnonzero(ok)
        sigma = MAD_TO_SIGMA * mad
        excess = x - level
        spike = np.isfinite(level) & (excess > np.maximum(math.log(MIN_RATIO), MIN_Z * sigma))
        if not st.calm_done:
            self._feed_calm(norms, rows, spike, np.isfinite(level) & (excess > math.log(CLIMB)))
        episodes = st.episodes
        for i in range(len(x)):
            if not spike[i] and episodes.idle:
                continue  # nothing open and nothing to count: the common case costs nothing
            step = int(v.steps[rows[i]])
            ratio = math.exp(min(float(excess[i]), 690.0)) if spike[i] else 0.0  # no OverflowError near 1e308
            event = episodes.feed(step, bool(spike[i]), ratio, weight=int(v.stride[rows[i]]))
            if spike[i] and event in ("open", "on") and episodes.open is not None and episodes.open.peak_step == step:
                z = float(excess[i] / sigma[i]) if sigma[i] > 0 else None
                peak = SpikePeak(float(norms[rows[i]]), float(math.exp(level[i])), z, top_contributors(v.grad[rows[i]]))
                st.peaks[str(episodes.open.start)] = peak
        st.hist = np.concatenate([st.hist, x])[-WINDOW:]
        keep = {str(ep.start) for ep in episodes.episodes()}
        st.peaks = {k: val for k, val in st.peaks.items() if k in keep}

    def _feed_calm(self, norms: np.ndarray, rows: np.ndarray, spike: np.ndarray, climbed: np.ndarray) -> None:
        """Add this chunk's norms up to the first spike, NaN/Inf or climb; then calm is over (chunking-invariant)."""
        st = self.st
        end = len(norms)
        bad = np.flatnonzero(~np.isfinite(norms))
        if len(bad):
            end = int(bad[0])
        over = spike | climbed
        if over.any():
            end = min(end, int(rows[np.argmax(over)]))
        st.calm.add(norms[:end])
        st.calm_done = end < len(norms)

    def quantile(self, q: float) -> float | None:
        """Any quantile of the global norms seen so far."""
        return self.st.quant.quantile(q)

    def summary(self) -> dict[str, float | int | None]:
        """The run-level numbers this rule keeps: median and p90 of all global norms, and p90 of the calm ones."""
        calm = self.st.calm.quantile(QUANTILE) if self.st.calm.total else None
        return {
            "global_grad_norm_p50": self.quantile(0.5),
            "global_grad_norm_p90": self.quantile(QUANTILE),
            "calm_grad_norm_p90": calm,
        }

    def state(self) -> dict[str, Any]:
        """JSON state: the last 51 log-norms, the histogram and the episodes."""
        return self.st.to_json()

    def findings(self, ctx: RunContext) -> list[Finding]:
        """One warning per spike episode (bursts merged), with clip_grad_norm_ at the p90 norm."""
        return [self._finding(ep, ctx) for ep in self.st.episodes.episodes()]

    def _finding(self, ep: Episode, ctx: RunContext) -> Finding:
        info = self.st.peaks.get(str(ep.start))
        ratio, norm, level = ep.peak, info.norm if info else None, info.level if info else None
        count = ep.n
        where = steps_where(ep.start, ep.last)
        top = [ctx.layers[i] for i in (info.layers if info else [])]
        message = (
            f"The global gradient norm spiked to {fmt(norm)} at step {ep.peak_step}, {fmt(ratio)}x its rolling median "
            f"{fmt(level)} over the previous {WINDOW} steps ({count} spiking step(s) at {where})."
        )
        if top:
            message += f" Largest contributions at the peak: {span(top)}."
        message += merged_note(ep.merged, "episode")
        return Finding(
            rule=RULE_ID,
            severity="warning",
            title=f"Gradient-norm spike at {where}",
            message=message,
            layers=top,
            step=ep.start,
            last_step=ep.last,
            evidence={
                "peak_step": ep.peak_step,
                "peak_global_grad_norm": norm,
                "rolling_median_global_grad_norm": level,
                "ratio_to_rolling_median": ratio,
                "robust_z": info.z if info else None,
                "spiking_steps": count,
                "global_grad_norm_p90": ctx.norm_p90,
            },
            thresholds={"min_ratio": MIN_RATIO, "min_robust_z": MIN_Z, "window": WINDOW, "clip_quantile": QUANTILE},
            remediation=[
                clip_remediation(ctx),
                lower_lr_remediation(
                    ctx.last_lr, 2, "repeated spikes mean some steps leave the region where the loss is smooth."
                ),
            ],
            confidence=0.85,
        )
