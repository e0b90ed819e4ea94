"""gradient_spike: the global gradient norm jumps far above its robust recent level (a "cliff")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..schema import Finding
from .chunk import ChunkView
from .common import RunContext, clip_remediation, fmt, lower_lr_remediation, span
from .rolling import MAD_TO_SIGMA, Episodes, LogHistogram, dec_array, enc_array, rolling_median_mad

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
# Spikes less than 25 logged steps apart are one episode (a burst, or a divergence still climbing).
RELEASE = 25
QUANTILE = 0.9  # clip at the 90th percentile: nine steps in ten pass unclipped


def top_contributors(grad: np.ndarray, share: float = 0.8, limit: int = 10) -> list[int]:
    """The fewest layers whose squared gradient norms make up `share` of the global norm squared."""
    sq = np.where(np.isfinite(grad), grad, 0.0) ** 2
    order = np.argsort(-sq, kind="stable")
    cum = np.cumsum(sq[order])
    if not len(cum) or cum[-1] <= 0:
        return []
    k = int(np.searchsorted(cum, share * cum[-1])) + 1
    return sorted(order[: min(k, limit)].tolist())


class GradientSpikeRule:
    """Rolling median/MAD of log global norm; spikes above max(5x, 6 sigma) open an episode."""

    rule_id = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        st = state or {}
        self.hist = dec_array(st.get("hist", []))
        self.quant = LogHistogram(st.get("quant"))
        self.episodes = Episodes(1, RELEASE, higher_is_worse=True, state=st.get("episodes"))
        self.extra: dict[str, Any] = st.get("extra", {})  # per-episode details keyed by start step

    def update(self, v: ChunkView) -> None:
        """Vectorised rolling level per chunk, then an O(1) episode step per finite norm."""
        norms = v.global_norm
        ok = np.isfinite(norms) & (norms > 0)
        self.quant.add(norms[ok])
        x = np.log(norms[ok])
        if not len(x):
            return
        level, mad = rolling_median_mad(self.hist, x, WINDOW, include_current=False, min_count=MIN_HISTORY)
        rows = np.flatnonzero(ok)
        steps = v.steps[rows]
        sigma = MAD_TO_SIGMA * mad
        excess = x - level
        spike = np.isfinite(level) & (excess > np.maximum(math.log(MIN_RATIO), MIN_Z * sigma))
        for i in range(len(x)):
            if not spike[i] and self.episodes.open is None and self.episodes.s["run_n"] == 0:
                continue  # nothing open and nothing to count: the common case costs nothing
            ratio = math.exp(min(float(excess[i]), 690.0)) if spike[i] else 0.0  # no OverflowError near 1e308
            event = self.episodes.feed(int(steps[i]), bool(spike[i]), ratio)
            if spike[i] and event in ("open", "on") and self.episodes.open["peak_step"] == int(steps[i]):
                z = float(excess[i] / sigma[i]) if sigma[i] > 0 else None
                self.extra[str(self.episodes.open["start"])] = {
                    "norm": float(norms[rows[i]]),
                    "level": float(math.exp(level[i])),
                    "z": z,
                    "layers": top_contributors(v.grad[rows[i]]),
                }
        self.hist = np.concatenate([self.hist, x])[-WINDOW:]
        self._trim_extra()

    def _trim_extra(self) -> None:
        keep = {str(ep["start"]) for ep in self.episodes.closed}
        if self.episodes.open is not None:
            keep.add(str(self.episodes.open["start"]))
        self.extra = {k: val for k, val in self.extra.items() if k in keep}

    def p90(self) -> float | None:
        """The 90th percentile of the global norms seen so far."""
        return self.quant.quantile(QUANTILE)

    def quantile(self, q: float) -> float | None:
        """Any quantile of the global norms seen so far."""
        return self.quant.quantile(q)

    def state(self) -> dict[str, Any]:
        """JSON state: the last 51 log-norms, the histogram and the episodes."""
        return {
            "hist": enc_array(self.hist),
            "quant": self.quant.state(),
            "episodes": self.episodes.state(),
            "extra": self.extra,
        }

    def findings(self, ctx: RunContext) -> list[Finding]:
        """One warning per spike episode (bursts merged), with clip_grad_norm_ at the p90 norm."""
        eps = list(self.episodes.closed) + ([self.episodes.open] if self.episodes.open else [])
        return [self._finding(ep, ctx) for ep in eps]

    def _finding(self, ep: dict[str, Any], ctx: RunContext) -> Finding:
        info = self.extra.get(str(ep["start"]), {})
        ratio, norm, level = ep["peak"], info.get("norm"), info.get("level")
        count = ep["n"]
        where = f"step {ep['start']}" if ep["last"] == ep["start"] else f"steps {ep['start']}–{ep['last']}"
        top = [ctx.layers[i] for i in info.get("layers", [])]
        message = (
            f"The global gradient norm spiked to {fmt(norm)} at step {ep['peak_step']}, {fmt(ratio)}x its rolling median "
            f"{fmt(level)} over the previous {WINDOW} steps ({count} spiking step(s) at {where})."
        )
        if top:
            message += f" Largest contributions at the peak: {span(top)}."
        if ep.get("merged"):
            message += f" {ep['merged']} later episode(s) are merged into this one."
        return Finding(
            rule=RULE_ID,
            severity="warning",
            title=f"Gradient-norm spike at {where}",
            message=message,
            layers=[ctx.layers[i] for i in info.get("layers", [])],
            step=ep["start"],
            last_step=ep["last"],
            evidence={
                "peak_step": ep["peak_step"],
                "peak_global_grad_norm": norm,
                "rolling_median_global_grad_norm": level,
                "ratio_to_rolling_median": ratio,
                "robust_z": info.get("z"),
                "spiking_steps": count,
                "global_grad_norm_p90": ctx.max_norm,
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
