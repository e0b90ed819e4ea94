"""update_ratio (run): the median layer's update/weight ratio stays far from ~1e-3."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..rules.update_ratio import DIVERGING, TARGET, TOO_FAST, TOO_SLOW
from ..schema import Finding, Remediation
from .chunk import ChunkView, row_median
from .common import REFS, RunContext, fmt, round2, span
from .rolling import Episodes

RULE_ID = "update_ratio"

# The band is the checkpoint rule's: warn outside [1e-5, 1e-1] (DeepDiagnosis, TheDeepChecker), error
# when the median step rewrites the weights (ratio >= 1). Here it must hold on 5 consecutive sampled
# steps spanning 50 optimizer steps (weights are sampled every ~10th step), so one odd sample or the
# first steps of a warm-up (ratio ~ lr, < 1e-5 only while lr < 1% of its peak) do not count.
# (24 healthy calibration runs kept the median between 1.5e-3 and 3.9e-2.)
CONFIRM_N = 5
MIN_SPAN = 50
RELEASE_N = 5
# "Too slow" is ignored while the logged lr is below 1% of its peak: that is an annealed schedule
# (cosine/step decay to ~0), which slows updates on purpose.
ANNEALED = 1e-2
MAX_LAYERS = 20


class UpdateRatioRule:
    """Sustained median update/weight outside the band, in either direction; flags the layers out of band."""

    rule_id = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        st = state or {}
        self.L = num_layers
        self.fast = Episodes(CONFIRM_N, RELEASE_N, MIN_SPAN, higher_is_worse=True, state=st.get("fast"))
        self.slow = Episodes(CONFIRM_N, RELEASE_N, MIN_SPAN, higher_is_worse=False, state=st.get("slow"))
        # per layer: out-of-band samples / samples during the current out-of-band run of the median
        self.hits = {d: np.array(st.get(f"hits_{d}", [0] * num_layers), dtype=np.int64) for d in ("fast", "slow")}
        self.samples = {d: int(st.get(f"samples_{d}", 0)) for d in ("fast", "slow")}
        self.lr_peak: float | None = st.get("lr_peak")
        self.last_median: float | None = st.get("last_median")
        self.lr_at: dict[str, Any] = st.get("lr_at", {})  # lr at each episode's worst sample

    def update(self, v: ChunkView) -> None:
        """Median over layers per sampled step (vectorised), then O(L) bookkeeping per sampled step."""
        ratio = np.where(v.upd_ratio > 0, v.upd_ratio, np.nan)  # zero updates are stalled_layer's case
        ok = np.isfinite(ratio)
        keep = ok.any(axis=1)
        rows, ratio, ok = v.upd_rows[keep], ratio[keep], ok[keep]
        lr = v.lr_filled
        lr_fin = np.isfinite(v.lr)
        if not len(rows):
            self._lr_peak(v.lr[lr_fin])
            return
        median = row_median(ratio)
        peaks = np.fmax.accumulate(np.concatenate([[self.lr_peak or np.nan], np.where(lr_fin, v.lr, np.nan)]))[1:]
        for k, r in enumerate(rows.tolist()):
            step, med = int(v.steps[r]), float(median[k])
            annealed = math.isfinite(lr[r]) and math.isfinite(peaks[r]) and lr[r] < ANNEALED * peaks[r]
            for name, eps, cond in (
                ("fast", self.fast, med > TOO_FAST),
                ("slow", self.slow, med < TOO_SLOW and not annealed),
            ):
                if cond:
                    self.samples[name] += 1
                    out = ratio[k] > TOO_FAST if name == "fast" else ratio[k] < TOO_SLOW
                    self.hits[name] += ok[k] & out
                elif self.samples[name]:
                    self.samples[name] = 0
                    self.hits[name][:] = 0
                if not cond and eps.open is None and eps.s["run_n"] == 0:
                    continue
                event = eps.feed(step, cond, med)
                if event in ("open", "on") and eps.open["peak_step"] == step:
                    self.lr_at[f"{name}:{eps.open['start']}"] = float(lr[r]) if math.isfinite(lr[r]) else None
                if event in ("open", "on"):
                    eps.open["layers"] = self._flagged(name)
            self.last_median = med
        self._lr_peak(v.lr[lr_fin])
        keep = {
            f"{name}:{ep['start']}"
            for name, eps in (("fast", self.fast), ("slow", self.slow))
            for ep in eps.closed + [eps.open]
            if ep
        }
        self.lr_at = {k: val for k, val in self.lr_at.items() if k in keep}  # bounded with the episodes

    def _lr_peak(self, lrs: np.ndarray) -> None:
        if len(lrs):
            top = float(lrs.max())
            self.lr_peak = top if self.lr_peak is None else max(self.lr_peak, top)

    def _flagged(self, name: str) -> list[int]:
        """Layers out of band (same direction) on at least half of the samples of the current run."""
        n = self.samples[name]
        return np.flatnonzero(self.hits[name] * 2 >= n).tolist()[:MAX_LAYERS] if n else []

    def state(self) -> dict[str, Any]:
        """JSON state."""
        return {
            "fast": self.fast.state(),
            "slow": self.slow.state(),
            "hits_fast": self.hits["fast"].tolist(),
            "hits_slow": self.hits["slow"].tolist(),
            "samples_fast": self.samples["fast"],
            "samples_slow": self.samples["slow"],
            "lr_peak": self.lr_peak,
            "last_median": self.last_median,
            "lr_at": self.lr_at,
        }

    def findings(self, ctx: RunContext) -> list[Finding]:
        """Ongoing: warning (error if the median ratio reached 1); recovered: info."""
        out = []
        for name, eps in (("fast", self.fast), ("slow", self.slow)):
            for ep in eps.closed:
                out.append(self._finding(name, ep, "info", ctx))
            if eps.open is not None:
                bad = name == "fast" and eps.open["peak"] >= DIVERGING
                out.append(self._finding(name, eps.open, "error" if bad else "warning", ctx))
        return out

    def _finding(self, name: str, ep: dict[str, Any], severity: str, ctx: RunContext) -> Finding:
        fast = name == "fast"
        worst = ep["peak"]
        lr = self.lr_at.get(f"{name}:{ep['start']}")
        suggested = round2(lr * TARGET / worst) if lr else None
        layers = [ctx.layers[i] for i in ep.get("layers", [])]
        ongoing = severity != "info"
        message = (
            f"From step {ep['start']} the median layer's update/weight ratio stayed "
            f"{'above' if fast else 'below'} {fmt(TOO_FAST if fast else TOO_SLOW)} (worst {fmt(worst)} at step "
            f"{ep['peak_step']}; ~1e-3 is typical): the weights move {'too fast' if fast else 'too slowly'}"
        )
        message += f", most in {span(layers)}." if layers else "."
        if not ongoing:
            message += f" Back in the band after step {ep['last']}."
        factor = TARGET / worst
        return Finding(
            rule=RULE_ID,
            severity=severity,  # type: ignore[arg-type]
            title=f"Updates {'too large' if fast else 'too small'} relative to the weights since step {ep['start']}",
            message=message,
            layers=layers,
            step=ep["start"],
            last_step=ctx.last_step if ongoing else ep["last"],
            evidence={
                "worst_median_update_to_weight": worst,
                "worst_step": ep["peak_step"],
                "last_median_update_to_weight": self.last_median,
                "samples": ep["n"],
                "lr": lr,
            },
            thresholds={"too_fast": TOO_FAST, "too_slow": TOO_SLOW, "diverging": DIVERGING, "target": TARGET},
            remediation=[
                Remediation(
                    action="scale_lr",
                    detail=f"Scale the learning rate by ~{fmt(factor)}"
                    + (f" (lr≈{fmt(suggested)})" if suggested else "")
                    + " so the median update is ~1e-3 of the weights, then tune around it.",
                    snippet=f"for group in optimizer.param_groups:\n    group['lr'] = {suggested}"
                    if suggested
                    else f"for group in optimizer.param_groups:\n    group['lr'] *= {round2(factor)}",
                    references=[REFS["cs231n"]],
                    params={"lr": suggested, "factor": round2(factor)},
                )
            ],
            confidence=0.8,
        )
