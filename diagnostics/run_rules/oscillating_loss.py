"""oscillating_loss: the loss goes up, down, up, down, step after step, by a large amount."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
from gradhealth.report import Finding, Remediation, Severity
from numpy.lib.stride_tricks import sliding_window_view

from .chunk import ChunkView
from .common import REFS, RunContext, fmt, lower_lr_remediation
from .rolling import Episode, Episodes, dec_array, enc_array

RULE_ID = "oscillating_loss"

# Over a window of 51 consecutive logged losses there are 49 places where the direction can flip.
# For iid noise each flips with probability 2/3: the turning-point count has mean 2(n-2)/3 = 32.7
# and variance (16n-29)/90 = 8.74 (Kendall & Stuart). 90% flips (>= 45) is 4.2 sigma above that;
# a period-2 oscillation flips at nearly every step. The 24 healthy calibration runs peak at 0.82.
# Records, not steps, whatever the client's stride: the flips are between consecutive logged losses and
# the bar counts them as independent draws. A throttled client's records are as many draws (a 51-step
# window would hold 5 losses at stride 10), and the 51 losses already span at least 51 steps. A period-2
# oscillation stays an alternation of the records at an odd stride; an even stride samples one phase only.
WINDOW = 51
FLIP_FRAC = 0.9
# "Large": the median step-to-step change is at least 1% of the loss (rules out round-off
# flicker at convergence).
MIN_AMPLITUDE = 0.01
# Sustained: the window test holds at 10 consecutive logged losses; released after 25 that fail.
CONFIRM_N = 10
RELEASE_N = 25


@dataclass
class OscillationPeak:
    """What an oscillation episode looked like at its worst window."""

    amplitude: float  # median step-to-step change of the loss
    level: float  # |median| of the loss over the window
    lr: float | None
    trend: float  # change of the loss over the window (negative: still decreasing)

    def to_json(self) -> dict[str, Any]:
        """JSON object."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OscillationPeak:
        """Read what to_json() wrote."""
        return cls(d["amplitude"], d["level"], d.get("lr"), d.get("trend", 0.0))


@dataclass
class OscillatingLossState:
    """The last 51 finite logged losses and their steps, the episodes and their peaks."""

    hist: np.ndarray
    hist_steps: np.ndarray
    episodes: Episodes
    peaks: dict[str, OscillationPeak]  # keyed by the episode's start step (a JSON key: a string)

    @classmethod
    def from_json(cls, st: dict[str, Any] | None) -> OscillatingLossState:
        """Read what to_json() wrote (None: a fresh state)."""
        st = st or {}
        return cls(
            hist=dec_array(st.get("hist", [])),
            hist_steps=np.array(st.get("hist_steps", []), dtype=np.int64),
            episodes=Episodes(CONFIRM_N, RELEASE_N, higher_is_worse=True, state=st.get("episodes")),
            peaks={k: OscillationPeak.from_json(v) for k, v in st.get("info", {}).items()},
        )

    def to_json(self) -> dict[str, Any]:
        """JSON object (the keys of state version 1)."""
        return {
            "hist": enc_array(self.hist),
            "hist_steps": self.hist_steps.tolist(),
            "episodes": self.episodes.state(),
            "info": {k: v.to_json() for k, v in self.peaks.items()},
        }


@dataclass(frozen=True)
class Windows:
    """The 51-loss windows ending at each new loss of a chunk."""

    ends: np.ndarray  # index of each window's last loss in the concatenated history
    frac: np.ndarray  # fraction of direction flips
    amp: np.ndarray  # median |change|
    med: np.ndarray  # |median| of the losses
    cond: np.ndarray  # flips and amplitude both over the bar


def windows(x: np.ndarray, new: int) -> Windows:
    """Vectorised flip fractions and amplitudes of the windows ending at the last `new` values of x."""
    d = np.diff(x)
    flips = (d[1:] * d[:-1] < 0).astype(np.int64)  # flips[j]: direction changes at x[j+1]
    csum = np.concatenate([[0], np.cumsum(flips)])
    ends = np.arange(max(len(x) - new, WINDOW - 1), len(x))  # windows x[e-50 .. e]
    frac = (csum[ends - 1] - csum[ends - WINDOW + 1]) / (WINDOW - 2)
    absd = sliding_window_view(np.abs(d), WINDOW - 1)[ends - WINDOW + 1]
    level = sliding_window_view(x, WINDOW)[ends - WINDOW + 1]
    amp = np.median(absd, axis=1)
    med = np.abs(np.median(level, axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(med > 0, amp / med, np.inf)
    return Windows(ends, frac, amp, med, (frac >= FLIP_FRAC) & (rel >= MIN_AMPLITUDE))


class OscillatingLossRule:
    """Rolling flip fraction and amplitude over the last 51 finite logged losses."""

    rule_id: ClassVar[str] = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.st = OscillatingLossState.from_json(state)

    def update(self, v: ChunkView) -> None:
        """Vectorised flips and rolling medians over the chunk, then O(1) per loss."""
        st = self.st
        x = np.concatenate([st.hist, v.fin_loss])
        steps = np.concatenate([st.hist_steps, v.fin_steps])
        new = len(v.fin_loss)
        if new and len(x) >= WINDOW:
            self._feed(x, steps, windows(x, new), v.lr_filled[v.fin_rows])
        st.hist, st.hist_steps = x[-WINDOW:], steps[-WINDOW:]
        keep = {str(ep.start) for ep in st.episodes.episodes()}
        st.peaks = {k: val for k, val in st.peaks.items() if k in keep}  # bounded with the episodes

    def _feed(self, x: np.ndarray, steps: np.ndarray, w: Windows, lrs: np.ndarray) -> None:
        episodes = self.st.episodes
        first_new = len(x) - len(lrs)
        for k, e in enumerate(w.ends.tolist()):
            if not w.cond[k] and episodes.idle:
                continue
            step = int(steps[e])
            event = episodes.feed(step, bool(w.cond[k]), float(w.frac[k]), start=int(steps[e - WINDOW + 1]))
            if event in ("open", "on") and episodes.open is not None and episodes.open.peak_step == step:
                lr = lrs[e - first_new]
                self.st.peaks[str(episodes.open.start)] = OscillationPeak(
                    amplitude=float(w.amp[k]),
                    level=float(w.med[k]),
                    lr=float(lr) if math.isfinite(lr) else None,
                    trend=float((x[e] + x[e - 1]) / 2 - (x[e - WINDOW + 1] + x[e - WINDOW + 2]) / 2),
                )

    def summary(self) -> dict[str, float | int | None]:
        """No run-level numbers of its own."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON state: the last 51 losses and the episodes."""
        return self.st.to_json()

    def findings(self, ctx: RunContext) -> list[Finding]:
        """Ongoing: warning; recovered: info."""
        episodes = self.st.episodes
        out = [self._finding(ep, "info", ctx) for ep in episodes.closed]
        if episodes.open is not None:
            out.append(self._finding(episodes.open, "warning", ctx))
        return out

    def _finding(self, ep: Episode, severity: Severity, ctx: RunContext) -> Finding:
        info = self.st.peaks.get(str(ep.start))
        ongoing = severity == "warning"
        amp, level, lr = (info.amplitude, info.level, info.lr) if info else (None, None, None)
        message = (
            f"From step {ep.start} the loss alternates up and down at {ep.peak:.0%} of consecutive steps (iid "
            f"noise gives ~67%), swinging by {fmt(amp)} around {fmt(level)}."
        )
        if info is not None and info.trend < 0:
            message += " It still decreases overall: near the edge of stability this is expected, but it wastes steps."
        if not ongoing:
            message += f" It settled after step {ep.last}."
        return Finding(
            rule=RULE_ID,
            severity=severity,
            title=f"Loss oscillating since step {ep.start}",
            message=message,
            layers=[],
            step=ep.start,
            last_step=ctx.last_step if ongoing else ep.last,
            evidence={
                "flip_fraction": ep.peak,
                "amplitude": amp,
                "loss_level": level,
                "trend_over_window": info.trend if info else None,
                "lr": lr,
            },
            thresholds={"flip_fraction": FLIP_FRAC, "min_amplitude": MIN_AMPLITUDE, "window": WINDOW},
            remediation=_advice(lr or ctx.last_lr),
            confidence=0.75,
        )


def _advice(lr: float | None) -> list[Remediation]:
    return [
        lower_lr_remediation(
            lr,
            2,
            "a period-2 oscillation means lr·λmax ≈ 2 along the sharpest direction; halving lr puts it back to ≈ 1.",
        ),
        Remediation(
            action="decay_lr",
            detail="Or keep the lr for early progress and decay it (cosine or step schedule) once the loss "
            "starts to bounce.",
            snippet="sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)",
            references=[REFS["cohen2021"], REFS["lewkowycz2020"]],
        ),
    ]
