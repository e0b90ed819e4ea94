"""loss_divergence: the loss rises far above its best level and stays there, or stops being finite."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from gradhealth.report import Finding, Remediation, Severity

from .chunk import ChunkView
from .common import REFS, RUN_REFS, RunContext, clip_remediation, fmt, lower_lr_remediation, span
from .divergence_state import LOST_PROGRESS, REL_RISE, Z_NOISE, Divergence, LossDivergenceState, LossPoint
from .gradient_spike import top_contributors
from .rolling import MAD_TO_SIGMA, MAX_EPISODES, opt_float

RULE_ID = "loss_divergence"

# When a loss exceeds the bar: see divergence_state.py.
# A rise is confirmed when at least 8 of 10 consecutive logged losses exceed, starting with the
# first: iid noise that exceeds with probability p = 0.05 does this with probability ~1e-9, and
# the first exceeding loss is the reported start of the rise. (Losses, not steps: the argument counts
# independent draws, which a throttled client has no more of per record; the start stays a step.)
CONFIRM_N = 10
CONFIRM_FRAC = 0.8
# It ends when fewer than half of the last 10 logged losses exceed.
RELEASE_FRAC = 0.5
# Sustained means 50 optimizer steps above the bar (step numbers, whatever the stride): lr warm-up and
# catapult spikes come back down within a few tens of steps (Lewkowycz et al. 2020; Goyal et al. 2017);
# a run still up after 50 is diverging. Shorter rises are a warning while they last and forgotten once
# they recover.
SUSTAIN_STEPS = 50


class LossDivergenceRule:
    """A per-loss state machine: exceedances against the best rolling median, confirmed and sustained."""

    rule_id: ClassVar[str] = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.st = LossDivergenceState.from_json(state)

    def update(self, v: ChunkView) -> None:
        """Walk the logged losses in order (O(1) work each)."""
        st = self.st
        fin_pos = {int(r): k for k, r in enumerate(v.fin_rows.tolist())}
        diff_sigma = st.diff_sigmas(v.fin_loss)
        for r in np.flatnonzero(v.loss_logged).tolist():
            step, x = int(v.steps[r]), float(v.loss[r])
            st.lr = opt_float(v.lr_prev[r])  # the lr of the update that produced this loss
            if not math.isfinite(x):
                self._nonfinite(step)
                continue
            exceed = self._push(step, x, v.grad[r])
            self._confirm_or_release(step, x, exceed)
            k = fin_pos[r]
            st.remember(x, int(v.stride[r]))
            level = st.level(float(v.loss_med[k]))
            sigma = MAD_TO_SIGMA * float(v.loss_mad_long[k])  # NaN before the 9th loss, when a stride's level is not
            self._track_best(step, level, sigma if math.isfinite(sigma) else st.early_sigma(), float(diff_sigma[k]))

    def _nonfinite(self, step: int) -> None:
        st = self.st
        ep = st.open or self._open(st.run_start if st.run_start is not None else step, st.run_layers)
        ep.nonfinite = True
        ep.nonfinite_step = ep.nonfinite_step if ep.nonfinite_step is not None else step
        ep.last = step

    def _push(self, step: int, x: float, grad: np.ndarray) -> bool:
        """Whether the loss exceeds the bar; into the confirmation window with it."""
        st = self.st
        exceed = st.best is not None and x > st.best + st.delta()
        if exceed and st.run_start is None:
            st.run_start, st.run_layers = step, top_contributors(grad, limit=5)
        elif not exceed:
            st.run_start, st.run_layers = None, []
        point = LossPoint(step, bool(exceed), st.run_layers if exceed else [], x, st.lr)
        st.fifo = (st.fifo + [point])[-CONFIRM_N:]
        return exceed

    def _confirm_or_release(self, step: int, x: float, exceed: bool) -> None:
        st = self.st
        flags = [e.exceeds for e in st.fifo]
        full, frac = len(flags) == CONFIRM_N, sum(flags) / CONFIRM_N
        ep = st.open
        if ep is None:
            if full and flags[0] and frac >= CONFIRM_FRAC:
                ep = self._open(st.fifo[0].step, st.fifo[0].layers)
        elif full and frac < RELEASE_FRAC:
            self._close()
            ep = None
        if ep is not None and exceed:
            ep.last = step
            if ep.peak is None or x > ep.peak:
                ep.peak, ep.peak_step = x, step

    def _track_best(self, step: int, m: float, sigma: float, diff_sigma: float) -> None:
        st = self.st
        if not math.isfinite(m):
            return
        if st.initial is None:
            st.initial = m
        if st.open is None and (st.best is None or m < st.best):
            st.best, st.best_sigma, st.best_step, st.lr_at_best = m, sigma, step, st.lr
            st.best_diff_sigma = diff_sigma if math.isfinite(diff_sigma) else None

    def _open(self, start: int, layers: list[int]) -> Divergence:
        st = self.st
        lr = next((e.lr for e in st.fifo if e.step == start), st.lr)  # the lr of the first rising loss
        threshold = st.best + st.delta() if st.best is not None else None
        ep = Divergence(
            start=int(start),
            last=int(start),
            peak=None,
            peak_step=None,
            layers=list(layers),
            nonfinite_step=None,
            best=st.best,
            best_step=st.best_step,
            threshold=threshold,
            lr_at_best=st.lr_at_best,
            lr_at_start=lr,
        )
        for e in st.fifo:  # the rise so far (the losses that confirmed it)
            if e.exceeds and e.step >= start and (ep.peak is None or e.loss > ep.peak):
                ep.peak, ep.peak_step, ep.last = e.loss, e.step, max(ep.last, e.step)
        st.open = ep
        return ep

    def _close(self) -> None:
        st = self.st
        ep, st.open = st.open, None
        assert ep is not None
        if ep.last - ep.start >= SUSTAIN_STEPS and len(st.closed) < MAX_EPISODES:
            st.closed.append(ep)  # a real divergence that the run came back from: keep it
        # a short excursion that came back (warm-up spike, catapult, one NaN batch: non_finite's) is forgotten

    def summary(self) -> dict[str, float | int | None]:
        """No run-level numbers of its own."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON state."""
        return self.st.to_json()

    def findings(self, ctx: RunContext) -> list[Finding]:
        """Open and sustained (or non-finite): error; open but young: warning; recovered long rises: warning."""
        out = [divergence_finding(ep, "warning", ctx, recovered=True) for ep in self.st.closed]
        ep = self.st.open
        if ep is not None:
            sustained = ep.nonfinite or ep.last - ep.start >= SUSTAIN_STEPS
            out.append(divergence_finding(ep, "error" if sustained else "warning", ctx, recovered=False))
        return out


def _lr_rose(ep: Divergence) -> bool:
    lr0, lr1 = ep.lr_at_best, ep.lr_at_start
    return lr0 is not None and lr1 is not None and lr1 > 1.5 * lr0


def _message(ep: Divergence, severity: Severity, ctx: RunContext, recovered: bool) -> str:
    start, best = ep.start, ep.best
    bar = f"the bar {fmt(ep.threshold)} set by its best level {fmt(best)} (step {ep.best_step})"
    if ep.nonfinite and ep.nonfinite_step == start:
        message = f"At step {start} the loss became non-finite" + (
            f" (its best level was {fmt(best)} at step {ep.best_step})." if best is not None else "."
        )
    elif ep.nonfinite:
        message = f"From step {start} the loss rose above {bar}, and became non-finite at step {ep.nonfinite_step}."
    else:
        message = f"From step {start} the loss rose above {bar}, up to {fmt(ep.peak)} at step {ep.peak_step}."
    if ep.layers:
        message += f" Largest gradients at the start: {span([ctx.layers[i] for i in ep.layers])}."
    if _lr_rose(ep):
        message += f" The learning rate had gone from {fmt(ep.lr_at_best)} to {fmt(ep.lr_at_start)}."
    if recovered:
        message += f" It came back below the bar after step {ep.last}."
    elif severity == "warning":
        message += f" Not yet sustained ({SUSTAIN_STEPS} steps): a warm-up spike that recovers is normal."
    return message


def _advice(ep: Divergence, ctx: RunContext) -> list[Remediation]:
    start, lr0 = ep.start, ep.lr_at_best
    lower = (
        Remediation(
            action="lower_lr",
            detail=f"Go back to the learning rate the run was stable at (lr≈{fmt(lr0)}), or raise it more gradually.",
            snippet=f"for group in optimizer.param_groups:\n    group['lr'] = {lr0}",
            references=[REFS["cohen2021"]],
            params={"lr": lr0},
        )
        if _lr_rose(ep)
        else lower_lr_remediation(
            ep.lr_at_start, 3, "a diverging loss is the classic sign of a step too large for the curvature."
        )
    )
    return [
        Remediation(
            action="restore_and_skip",
            detail=f"Restore a checkpoint from before step {start} (the loss was at its best around step "
            f"{ep.best_step}), then resume with the changes below; if it recurs at the same data, skip those batches.",
            references=[RUN_REFS["chowdhery2022"]],
            params={"step": start, "best_step": ep.best_step},
        ),
        lower,
        clip_remediation(ctx),
        Remediation(
            action="add_warmup",
            detail="Ramp the learning rate up over the first few hundred steps instead of starting at full size.",
            snippet="sched = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=500)",
            references=[RUN_REFS["goyal2017"], REFS["xiong2020"]],
            params={"warmup_steps": 500},
        ),
    ]


def divergence_finding(ep: Divergence, severity: Severity, ctx: RunContext, recovered: bool) -> Finding:
    """The finding for one divergence at the given severity."""
    title = (
        "Loss diverged" if severity == "error" else "Loss rising" if not recovered else "Loss diverged, then recovered"
    )
    return Finding(
        rule=RULE_ID,
        severity=severity,
        title=f"{title} from step {ep.start}",
        message=_message(ep, severity, ctx, recovered),
        layers=[ctx.layers[i] for i in ep.layers],
        step=ep.start,
        last_step=ep.last if recovered else ctx.last_step,
        evidence={
            "best_loss": ep.best,
            "best_step": ep.best_step,
            "threshold": ep.threshold,
            "peak_loss": ep.peak,
            "peak_step": ep.peak_step if ep.peak is not None else None,
            "nonfinite_loss": ep.nonfinite,
            "lr_at_best": ep.lr_at_best,
            "lr_at_start": ep.lr_at_start,
            "last_exceeding_step": ep.last,
        },
        thresholds={
            "noise_sigmas": Z_NOISE,
            "relative_rise": REL_RISE,
            "lost_progress": LOST_PROGRESS,
            "confirm_losses": CONFIRM_N,
            "confirm_fraction": CONFIRM_FRAC,
            "sustain_steps": SUSTAIN_STEPS,
        },
        remediation=_advice(ep, ctx),
        confidence=0.9 if severity == "error" else 0.6,
    )
