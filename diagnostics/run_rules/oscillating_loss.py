"""oscillating_loss: the loss goes up, down, up, down, step after step, by a large amount."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..schema import Finding, Remediation
from .chunk import ChunkView
from .common import REFS, RunContext, fmt, lower_lr_remediation
from .rolling import Episodes, dec_array, enc_array

RULE_ID = "oscillating_loss"

# Over a window of 51 consecutive logged losses there are 49 places where the direction can flip.
# For iid noise each flips with probability 2/3: the turning-point count has mean 2(n-2)/3 = 32.7
# and variance (16n-29)/90 = 8.74 (Kendall & Stuart). 90% flips (>= 45) is 4.2 sigma above that;
# a period-2 oscillation flips at nearly every step. The 24 healthy calibration runs peak at 0.82.
WINDOW = 51
FLIP_FRAC = 0.9
# "Large": the median step-to-step change is at least 1% of the loss (rules out round-off
# flicker at convergence).
MIN_AMPLITUDE = 0.01
# Sustained: the window test holds at 10 consecutive logged losses; released after 25 that fail.
CONFIRM_N = 10
RELEASE_N = 25


class OscillatingLossRule:
    """Rolling flip fraction and amplitude over the last 51 finite logged losses."""

    rule_id = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        st = state or {}
        self.hist = dec_array(st.get("hist", []))
        self.hist_steps = np.array(st.get("hist_steps", []), dtype=np.int64)
        self.episodes = Episodes(CONFIRM_N, RELEASE_N, higher_is_worse=True, state=st.get("episodes"))
        self.info: dict[str, Any] = st.get("info", {})

    def update(self, v: ChunkView) -> None:
        """Vectorised flips and rolling medians over the chunk, then O(1) per loss."""
        x = np.concatenate([self.hist, v.fin_loss])
        steps = np.concatenate([self.hist_steps, v.fin_steps])
        lrs = v.lr_filled[v.fin_rows]
        new = len(v.fin_loss)
        if new and len(x) >= WINDOW:
            d = np.diff(x)
            flips = (d[1:] * d[:-1] < 0).astype(np.int64)  # flips[j]: direction changes at x[j+1]
            csum = np.concatenate([[0], np.cumsum(flips)])
            ends = np.arange(max(len(x) - new, WINDOW - 1), len(x))  # windows x[e-50 .. e]
            nflips = csum[ends - 1] - csum[ends - WINDOW + 1]
            frac = nflips / (WINDOW - 2)
            absd = sliding_window_view(np.abs(d), WINDOW - 1)[ends - WINDOW + 1]
            level = sliding_window_view(x, WINDOW)[ends - WINDOW + 1]
            amp = np.median(absd, axis=1)
            med = np.abs(np.median(level, axis=1))
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(med > 0, amp / med, np.inf)
            cond = (frac >= FLIP_FRAC) & (rel >= MIN_AMPLITUDE)
            for k, e in enumerate(ends.tolist()):
                if not cond[k] and self.episodes.open is None and self.episodes.s["run_n"] == 0:
                    continue
                start = int(steps[e - WINDOW + 1])
                event = self.episodes.feed(int(steps[e]), bool(cond[k]), float(frac[k]), start=start)
                if event in ("open", "on") and self.episodes.open["peak_step"] == int(steps[e]):
                    lr = lrs[e - (len(x) - new)]
                    self.info[str(self.episodes.open["start"])] = {
                        "amplitude": float(amp[k]),
                        "level": float(med[k]),
                        "lr": float(lr) if math.isfinite(lr) else None,
                        "trend": float((x[e] + x[e - 1]) / 2 - (x[e - WINDOW + 1] + x[e - WINDOW + 2]) / 2),
                    }
        self.hist, self.hist_steps = x[-WINDOW:], steps[-WINDOW:]
        keep = {str(ep["start"]) for ep in self.episodes.closed + [self.episodes.open] if ep}
        self.info = {k: val for k, val in self.info.items() if k in keep}  # bounded with the episodes

    def state(self) -> dict[str, Any]:
        """JSON state: the last 51 losses and the episodes."""
        return {
            "hist": enc_array(self.hist),
            "hist_steps": self.hist_steps.tolist(),
            "episodes": self.episodes.state(),
            "info": self.info,
        }

    def findings(self, ctx: RunContext) -> list[Finding]:
        """Ongoing: warning; recovered: info."""
        out = [self._finding(ep, "info", ctx) for ep in self.episodes.closed]
        if self.episodes.open is not None:
            out.append(self._finding(self.episodes.open, "warning", ctx))
        return out

    def _finding(self, ep: dict[str, Any], severity: str, ctx: RunContext) -> Finding:
        info = self.info.get(str(ep["start"]), {})
        ongoing = severity == "warning"
        amp, level, lr = info.get("amplitude"), info.get("level"), info.get("lr")
        message = (
            f"From step {ep['start']} the loss alternates up and down at {ep['peak']:.0%} of consecutive steps (iid "
            f"noise gives ~67%), swinging by {fmt(amp)} around {fmt(level)}."
        )
        if info.get("trend", 0.0) < 0:
            message += " It still decreases overall: near the edge of stability this is expected, but it wastes steps."
        if not ongoing:
            message += f" It settled after step {ep['last']}."
        return Finding(
            rule=RULE_ID,
            severity=severity,  # type: ignore[arg-type]
            title=f"Loss oscillating since step {ep['start']}",
            message=message,
            layers=[],
            step=ep["start"],
            last_step=ctx.last_step if ongoing else ep["last"],
            evidence={
                "flip_fraction": ep["peak"],
                "amplitude": amp,
                "loss_level": level,
                "trend_over_window": info.get("trend"),
                "lr": lr,
            },
            thresholds={"flip_fraction": FLIP_FRAC, "min_amplitude": MIN_AMPLITUDE, "window": WINDOW},
            remediation=[
                lower_lr_remediation(
                    lr or ctx.last_lr,
                    2,
                    "a period-2 oscillation means lr·λmax ≈ 2 along the sharpest direction; halving lr puts it "
                    "back to ≈ 1.",
                ),
                Remediation(
                    action="decay_lr",
                    detail="Or keep the lr for early progress and decay it (cosine or step schedule) once the loss "
                    "starts to bounce.",
                    snippet="sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)",
                    references=[REFS["cohen2021"], REFS["lewkowycz2020"]],
                ),
            ],
            confidence=0.75,
        )
