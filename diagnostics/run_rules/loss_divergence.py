"""loss_divergence: the loss rises far above its best level and stays there, or stops being finite."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..schema import Finding, Remediation
from .chunk import ChunkView
from .common import REFS, RUN_REFS, RunContext, clip_remediation, fmt, lower_lr_remediation, span
from .gradient_spike import top_contributors
from .rolling import MAD_TO_SIGMA, MAX_EPISODES, opt_float

RULE_ID = "loss_divergence"

# Reference: the best (lowest) 9-point rolling median of the loss so far, and the minibatch noise
# sigma (1.4826 MAD of the last 51 losses) at that point. A logged loss "exceeds" when it is above
# best + delta, delta being the largest of
#  - 4 sigma: a raw loss rarely sits 4 sigma high (heavy-tailed minibatch losses do it at a few %),
#  - the smaller of |best| (the loss doubled) and half of initial-best (half the progress lost):
#    either is a real setback, and the second still works for losses near or below zero,
#  - 0.1% of the loss scale, so round-off at convergence never counts.
# (Calibrated on healthy SGD runs whose minibatch loss swings 0.03-0.9 around a 0.15 level: the
# lucky 9-point minimum 0.065 with a 50% bar flagged them; noise-scaled bars do not.)
Z_NOISE = 4.0
REL_RISE = 1.0
LOST_PROGRESS = 0.5
FLOOR = 1e-3
# A rise is confirmed when at least 8 of 10 consecutive logged losses exceed, starting with the
# first: iid noise that exceeds with probability p = 0.05 does this with probability ~1e-9, and
# the first exceeding loss is the reported start of the rise.
CONFIRM_N = 10
CONFIRM_FRAC = 0.8
# It ends when fewer than half of the last 10 logged losses exceed.
RELEASE_FRAC = 0.5
# Sustained means 50 optimizer steps above the bar: lr warm-up and catapult spikes come back down
# within a few tens of steps (Lewkowycz et al. 2020; Goyal et al. 2017); a run still up after 50 is
# diverging. Shorter rises are a warning while they last and forgotten once they recover.
SUSTAIN_STEPS = 50


class LossDivergenceRule:
    """A per-loss state machine: exceedances against the best rolling median, confirmed and sustained."""

    rule_id = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.s: dict[str, Any] = state or {
            "initial": None,
            "best": None,
            "best_sigma": 0.0,
            "best_step": None,
            "lr_at_best": None,
            # last 10 finite logged losses: [step, exceeds, top layers at its run's start, loss, lr]
            "fifo": [],
            "run_start": None,
            "run_layers": [],
            "open": None,
            "closed": [],
            "lr": None,
        }

    def _delta(self) -> float:
        s = self.s
        best, initial = s["best"], s["initial"]
        setback = min(REL_RISE * abs(best), LOST_PROGRESS * (initial - best))
        return max(Z_NOISE * s["best_sigma"], setback, FLOOR * max(abs(initial), abs(best)), 1e-12)

    def update(self, v: ChunkView) -> None:
        """Walk the logged losses in order (O(1) work each)."""
        s = self.s
        fin_pos = {int(r): k for k, r in enumerate(v.fin_rows.tolist())}
        for r in np.flatnonzero(v.loss_logged).tolist():
            step, x = int(v.steps[r]), float(v.loss[r])
            s["lr"] = opt_float(v.lr_prev[r])  # the lr of the update that produced this loss
            if not math.isfinite(x):
                ep = s["open"] or self._open(s["run_start"] if s["run_start"] is not None else step, s["run_layers"])
                ep["nonfinite"] = True
                ep["nonfinite_step"] = ep["nonfinite_step"] if ep["nonfinite_step"] is not None else step
                ep["last"] = step
                continue
            exceed = s["best"] is not None and x > s["best"] + self._delta()
            if exceed and s["run_start"] is None:
                s["run_start"], s["run_layers"] = step, top_contributors(v.grad[r], limit=5)
            elif not exceed:
                s["run_start"], s["run_layers"] = None, []
            s["fifo"] = (s["fifo"] + [[step, bool(exceed), s["run_layers"] if exceed else [], x, s["lr"]]])[-CONFIRM_N:]
            flags = [e[1] for e in s["fifo"]]
            full, frac = len(flags) == CONFIRM_N, sum(flags) / CONFIRM_N
            ep = s["open"]
            if ep is None:
                if full and flags[0] and frac >= CONFIRM_FRAC:
                    ep = self._open(s["fifo"][0][0], s["fifo"][0][2])
            elif full and frac < RELEASE_FRAC:
                self._close()
                ep = None
            if ep is not None and exceed:
                ep["last"] = step
                if ep["peak"] is None or x > ep["peak"]:
                    ep["peak"], ep["peak_step"] = x, step
            k = fin_pos[r]
            m, mad = float(v.loss_med[k]), float(v.loss_mad_long[k])
            if math.isfinite(m):
                if s["initial"] is None:
                    s["initial"] = m
                if s["open"] is None and (s["best"] is None or m < s["best"]):
                    s["best"], s["best_sigma"], s["best_step"], s["lr_at_best"] = m, MAD_TO_SIGMA * mad, step, s["lr"]

    def _open(self, start: int, layers: list[int]) -> dict[str, Any]:
        s = self.s
        lr = next((e[4] for e in s["fifo"] if e[0] == start), s["lr"])  # the lr of the first rising loss
        threshold = s["best"] + self._delta() if s["best"] is not None else None
        s["open"] = {
            "start": int(start),
            "last": int(start),
            "peak": None,
            "peak_step": None,
            "layers": list(layers),
            "nonfinite_step": None,
            "best": s["best"],
            "best_step": s["best_step"],
            "threshold": threshold,
            "lr_at_best": s["lr_at_best"],
            "lr_at_start": lr,
            "nonfinite": False,
        }
        for step, exceed, _, x, _ in s["fifo"]:  # the rise so far (the losses that confirmed it)
            if exceed and step >= start and (s["open"]["peak"] is None or x > s["open"]["peak"]):
                s["open"]["peak"], s["open"]["peak_step"], s["open"]["last"] = x, step, max(s["open"]["last"], step)
        return s["open"]

    def _close(self) -> None:
        s = self.s
        ep, s["open"] = s["open"], None
        if ep["last"] - ep["start"] >= SUSTAIN_STEPS and len(s["closed"]) < MAX_EPISODES:
            s["closed"].append(ep)  # a real divergence that the run came back from: keep it
        # a short excursion that came back (warm-up spike, catapult, one NaN batch: non_finite's) is forgotten

    def state(self) -> dict[str, Any]:
        """JSON state."""
        return self.s

    def findings(self, ctx: RunContext) -> list[Finding]:
        """Open and sustained (or non-finite): error; open but young: warning; recovered long rises: warning."""
        out = [self._finding(ep, "warning", ctx, recovered=True) for ep in self.s["closed"]]
        ep = self.s["open"]
        if ep is not None:
            sustained = ep["nonfinite"] or ep["last"] - ep["start"] >= SUSTAIN_STEPS
            out.append(self._finding(ep, "error" if sustained else "warning", ctx, recovered=False))
        return out

    def _finding(self, ep: dict[str, Any], severity: str, ctx: RunContext, recovered: bool) -> Finding:
        start, best, peak = ep["start"], ep["best"], ep["peak"]
        lr0, lr1 = ep["lr_at_best"], ep["lr_at_start"]
        lr_rose = lr0 is not None and lr1 is not None and lr1 > 1.5 * lr0
        bar = f"the bar {fmt(ep['threshold'])} set by its best level {fmt(best)} (step {ep['best_step']})"
        if ep["nonfinite"] and ep["nonfinite_step"] == start:
            message = f"At step {start} the loss became non-finite" + (
                f" (its best level was {fmt(best)} at step {ep['best_step']})." if best is not None else "."
            )
        elif ep["nonfinite"]:
            message = (
                f"From step {start} the loss rose above {bar}, and became non-finite at step {ep['nonfinite_step']}."
            )
        else:
            message = f"From step {start} the loss rose above {bar}, up to {fmt(peak)} at step {ep['peak_step']}."
        if ep["layers"]:
            message += f" Largest gradients at the start: {span([ctx.layers[i] for i in ep['layers']])}."
        if lr_rose:
            message += f" The learning rate had gone from {fmt(lr0)} to {fmt(lr1)}."
        if recovered:
            message += f" It came back below the bar after step {ep['last']}."
        elif severity == "warning":
            message += f" Not yet sustained ({SUSTAIN_STEPS} steps): a warm-up spike that recovers is normal."
        title = (
            "Loss diverged"
            if severity == "error"
            else "Loss rising"
            if not recovered
            else "Loss diverged, then recovered"
        )
        title += f" from step {start}"
        advice = [
            Remediation(
                action="restore_and_skip",
                detail=f"Restore a checkpoint from before step {start} (the loss was at its best around step "
                f"{ep['best_step']}), then resume with the changes below; if it recurs at the same data, skip those batches.",
                references=[RUN_REFS["chowdhery2022"]],
                params={"step": start, "best_step": ep["best_step"]},
            ),
            Remediation(
                action="lower_lr",
                detail=f"Go back to the learning rate the run was stable at (lr≈{fmt(lr0)}), or raise it more gradually.",
                snippet=f"for group in optimizer.param_groups:\n    group['lr'] = {lr0}",
                references=[REFS["cohen2021"]],
                params={"lr": lr0},
            )
            if lr_rose
            else lower_lr_remediation(
                lr1, 3, "a diverging loss is the classic sign of a step too large for the curvature."
            ),
            clip_remediation(ctx),
            Remediation(
                action="add_warmup",
                detail="Ramp the learning rate up over the first few hundred steps instead of starting at full size.",
                snippet="sched = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=500)",
                references=[RUN_REFS["goyal2017"], REFS["xiong2020"]],
                params={"warmup_steps": 500},
            ),
        ]
        return Finding(
            rule=RULE_ID,
            severity=severity,  # type: ignore[arg-type]
            title=title,
            message=message,
            layers=[ctx.layers[i] for i in ep["layers"]],
            step=start,
            last_step=ep["last"] if recovered else ctx.last_step,
            evidence={
                "best_loss": best,
                "best_step": ep["best_step"],
                "threshold": ep["threshold"],
                "peak_loss": peak,
                "peak_step": ep["peak_step"] if peak is not None else None,
                "nonfinite_loss": ep["nonfinite"],
                "lr_at_best": lr0,
                "lr_at_start": lr1,
                "last_exceeding_step": ep["last"],
            },
            thresholds={
                "noise_sigmas": Z_NOISE,
                "relative_rise": REL_RISE,
                "lost_progress": LOST_PROGRESS,
                "confirm_losses": CONFIRM_N,
                "confirm_fraction": CONFIRM_FRAC,
                "sustain_steps": SUSTAIN_STEPS,
            },
            remediation=advice,
            confidence=0.9 if severity == "error" else 0.6,
        )
