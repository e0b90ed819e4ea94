"""update_ratio (run): the median layer's update/weight ratio stays far from ~1e-3."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from gradhealth.report import Finding, Remediation, Severity

from ..rules.lr_advice import TARGET, TOO_FAST, TOO_SLOW
from ..rules.update_ratio import DIVERGING
from .chunk import ChunkView, row_median
from .common import REFS, RunContext, fmt, round2, span
from .rolling import Episode, Episodes

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


@dataclass
class Direction:
    """One direction (too fast or too slow): its episodes and the layers out of band in the current run."""

    episodes: Episodes
    hits: np.ndarray  # per layer: out-of-band samples during the current out-of-band run of the median
    samples: int = 0  # samples in that run

    def flagged(self) -> list[int]:
        """Layers out of band (same direction) on at least half of the samples of the current run."""
        n = self.samples
        return np.flatnonzero(self.hits * 2 >= n).tolist()[:MAX_LAYERS] if n else []


@dataclass
class UpdateRatioState:
    """Both directions, the lr peak (to tell an annealed schedule) and the last median ratio."""

    fast: Direction
    slow: Direction
    lr_peak: float | None = None
    last_median: float | None = None
    lr_at: dict[str, float | None] = field(default_factory=dict)  # "fast:<start>" -> lr at the episode's worst sample

    @classmethod
    def from_json(cls, st: dict[str, Any] | None, num_layers: int) -> UpdateRatioState:
        """Read what to_json() wrote (None: a fresh state)."""
        st = st or {}

        def direction(name: str, higher_is_worse: bool) -> Direction:
            episodes = Episodes(CONFIRM_N, RELEASE_N, MIN_SPAN, higher_is_worse=higher_is_worse, state=st.get(name))
            hits = np.array(st.get(f"hits_{name}", [0] * num_layers), dtype=np.int64)
            return Direction(episodes, hits, int(st.get(f"samples_{name}", 0)))

        return cls(
            direction("fast", True),
            direction("slow", False),
            st.get("lr_peak"),
            st.get("last_median"),
            dict(st.get("lr_at", {})),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON object (the keys of state version 1)."""
        return {
            "fast": self.fast.episodes.state(),
            "slow": self.slow.episodes.state(),
            "hits_fast": self.fast.hits.tolist(),
            "hits_slow": self.slow.hits.tolist(),
            "samples_fast": self.fast.samples,
            "samples_slow": self.slow.samples,
            "lr_peak": self.lr_peak,
            "last_median": self.last_median,
            "lr_at": self.lr_at,
        }

    def directions(self) -> tuple[tuple[str, Direction], tuple[str, Direction]]:
        """("fast", ...), ("slow", ...)."""
        return ("fast", self.fast), ("slow", self.slow)


class UpdateRatioRule:
    """Sustained median update/weight outside the band, in either direction; flags the layers out of band."""

    rule_id: ClassVar[str] = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.L = num_layers
        self.st = UpdateRatioState.from_json(state, num_layers)

    def update(self, v: ChunkView) -> None:
        """Median over layers per sampled step (vectorised), then O(L) bookkeeping per sampled step."""
        st = self.st
        ratio = np.where(v.upd_ratio > 0, v.upd_ratio, np.nan)  # zero updates are stalled_layer's case
        ok = np.isfinite(ratio)
        keep = ok.any(axis=1)
        rows, ratio, ok = v.upd_rows[keep], ratio[keep], ok[keep]
        lr_fin = np.isfinite(v.lr)
        if len(rows):
            median = row_median(ratio)
            peaks = np.fmax.accumulate(np.concatenate([[st.lr_peak or np.nan], np.where(lr_fin, v.lr, np.nan)]))[1:]
            for k, r in enumerate(rows.tolist()):
                lr, med = float(v.lr_filled[r]), float(median[k])
                annealed = math.isfinite(lr) and math.isfinite(peaks[r]) and lr < ANNEALED * peaks[r]
                self._sample(int(v.steps[r]), med, ratio[k], ok[k], lr, annealed)
                st.last_median = med
        self._lr_peak(v.lr[lr_fin])
        keep_keys = {f"{name}:{ep.start}" for name, d in st.directions() for ep in d.episodes.episodes()}
        st.lr_at = {k: val for k, val in st.lr_at.items() if k in keep_keys}  # bounded with the episodes

    def _sample(self, step: int, med: float, ratio: np.ndarray, ok: np.ndarray, lr: float, annealed: bool) -> None:
        """One sampled step: count the out-of-band layers and feed both directions' episodes."""
        for name, d in self.st.directions():
            cond = med > TOO_FAST if name == "fast" else (med < TOO_SLOW and not annealed)
            if cond:
                d.samples += 1
                out = ratio > TOO_FAST if name == "fast" else ratio < TOO_SLOW
                d.hits += ok & out
            elif d.samples:
                d.samples = 0
                d.hits[:] = 0
            eps = d.episodes
            if not cond and eps.idle:
                continue
            event = eps.feed(step, cond, med)
            if event in ("open", "on") and eps.open is not None:
                if eps.open.peak_step == step:
                    self.st.lr_at[f"{name}:{eps.open.start}"] = lr if math.isfinite(lr) else None
                eps.open.layers = d.flagged()

    def _lr_peak(self, lrs: np.ndarray) -> None:
        if len(lrs):
            top = float(lrs.max())
            self.st.lr_peak = top if self.st.lr_peak is None else max(self.st.lr_peak, top)

    def summary(self) -> dict[str, float | int | None]:
        """The run-level number this rule keeps: the last median update/weight ratio."""
        return {"median_update_to_weight": self.st.last_median}

    def state(self) -> dict[str, Any]:
        """JSON state."""
        return self.st.to_json()

    def findings(self, ctx: RunContext) -> list[Finding]:
        """Ongoing: warning (error if the median ratio reached 1); recovered: info."""
        out = []
        for name, d in self.st.directions():
            for ep in d.episodes.closed:
                out.append(self._finding(name, ep, "info", ctx))
            current = d.episodes.open
            if current is not None:
                bad = name == "fast" and current.peak >= DIVERGING
                out.append(self._finding(name, current, "error" if bad else "warning", ctx))
        return out

    def _finding(self, name: str, ep: Episode, severity: Severity, ctx: RunContext) -> Finding:
        fast = name == "fast"
        lr = self.st.lr_at.get(f"{name}:{ep.start}")
        layers = [ctx.layers[i] for i in ep.layers or []]
        ongoing = severity != "info"
        message = (
            f"From step {ep.start} the median layer's update/weight ratio stayed "
            f"{'above' if fast else 'below'} {fmt(TOO_FAST if fast else TOO_SLOW)} (worst {fmt(ep.peak)} at step "
            f"{ep.peak_step}; ~1e-3 is typical): the weights move {'too fast' if fast else 'too slowly'}"
        )
        message += f", most in {span(layers)}." if layers else "."
        if not ongoing:
            message += f" Back in the band after step {ep.last}."
        return Finding(
            rule=RULE_ID,
            severity=severity,
            title=f"Updates {'too large' if fast else 'too small'} relative to the weights since step {ep.start}",
            message=message,
            layers=layers,
            step=ep.start,
            last_step=ctx.last_step if ongoing else ep.last,
            evidence={
                "worst_median_update_to_weight": ep.peak,
                "worst_step": ep.peak_step,
                "last_median_update_to_weight": self.st.last_median,
                "samples": ep.n,
                "lr": lr,
            },
            thresholds={"too_fast": TOO_FAST, "too_slow": TOO_SLOW, "diverging": DIVERGING, "target": TARGET},
            remediation=[_scale_lr(lr, ep.peak)],
            confidence=0.8,
        )


def _scale_lr(lr: float | None, worst: float) -> Remediation:
    factor = TARGET / worst
    suggested = round2(lr * TARGET / worst) if lr else None
    return Remediation(
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
