"""loss_plateau: the smoothed loss has not improved meaningfully for a long stretch of the run."""

from __future__ import annotations

import math
from typing import Any

from ..schema import Finding, Remediation
from .chunk import ChunkView
from .common import RUN_REFS, RunContext, fmt, lower_lr_remediation
from .rolling import MAD_TO_SIGMA

RULE_ID = "loss_plateau"

# The level is the median of the last 51 logged losses (from 9 on): minibatch losses swing by tens of
# percent, and a short median's own noise would look like progress. "Meaningful" improvement: the
# level falls below the reference by 1% of its size and by 3 standard errors of the median
# (1.253 * sigma / sqrt(n) for a normal sample, sigma = 1.4826 MAD of the same window).
WINDOW = 51
IMPROVE_REL = 0.01
IMPROVE_SE = 3.0
# "Long": at least 300 optimizer steps and 50 logged losses, and a quarter of the run so far (a run at
# step 100k is not plateaued because its last 300 steps were flat; one improving like a power law
# loss ~ t^-0.1 still gains 3.5% over its last quarter).
MIN_STEPS = 300
MIN_LOGGED = 50
RUN_FRACTION = 0.25
# Less than 5% below the first smoothed loss overall means it never learned: a warning, not info.
NO_PROGRESS = 0.05


class LossPlateauRule:
    """The step of the last meaningful improvement; a plateau is a long time since it."""

    rule_id = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.s: dict[str, Any] = state or {
            "first_step": None,
            "initial": None,
            "ref": None,
            "ref_step": None,
            "since": 0,
            "last": None,
            "last_step": None,
            "lr_at_ref": None,
            "lr": None,
            "n": 0,
        }

    def update(self, v: ChunkView) -> None:
        """O(1) per finite logged loss, on the shared 51-point rolling median."""
        s = self.s
        for k in range(len(v.fin_loss)):
            s["n"] += 1
            m = float(v.loss_med_long[k])
            if not math.isfinite(m):
                continue
            step = int(v.fin_steps[k])
            lr = v.lr_filled[v.fin_rows[k]]
            s["lr"] = float(lr) if math.isfinite(lr) else None
            if s["first_step"] is None:
                s["first_step"], s["initial"] = step, m
            se = 1.253 * MAD_TO_SIGMA * float(v.loss_mad_long[k]) / math.sqrt(min(s["n"], WINDOW))
            tol = max(IMPROVE_REL * abs(s["ref"] or 0.0), IMPROVE_SE * se)
            if s["ref"] is None or m < s["ref"] - tol:
                s["ref"], s["ref_step"], s["since"], s["lr_at_ref"] = m, step, 0, s["lr"]
            else:
                s["since"] += 1
            s["last"], s["last_step"] = m, step

    def state(self) -> dict[str, Any]:
        """JSON state: a handful of numbers."""
        return self.s

    def _plateau(self) -> bool:
        s = self.s
        if s["ref_step"] is None:
            return False
        flat = s["last_step"] - s["ref_step"]
        return (
            flat >= MIN_STEPS and s["since"] >= MIN_LOGGED and flat >= RUN_FRACTION * (s["last_step"] - s["first_step"])
        )

    def findings(self, ctx: RunContext) -> list[Finding]:
        """At most one finding: the current plateau, if any (an improvement ends it)."""
        if not self._plateau():
            return []
        s = self.s
        start, ref, initial = s["ref_step"], s["ref"], s["initial"]
        progress = (initial - ref) / abs(initial) if initial else 0.0
        stuck = progress < NO_PROGRESS
        flat = s["last_step"] - start
        if stuck:
            message = (
                f"The loss has not improved since step {start}: its smoothed value is {fmt(s['last'])}, within "
                f"{progress:.1%} of where the run started ({fmt(initial)}). The model is not learning."
            )
        else:
            message = (
                f"No meaningful improvement for {flat} steps (since step {start}): the smoothed loss is "
                f"{fmt(s['last'])}, best {fmt(ref)}, down {progress:.0%} from {fmt(initial)} at the start."
            )
        remediation = []
        if stuck:
            remediation.append(
                Remediation(
                    action="check_lr_and_data",
                    detail="A loss flat from the start usually means a learning rate far off (run an LR range test), "
                    "labels not matching inputs, or a dead network (run `gradhealth analyze` on a checkpoint).",
                    references=[RUN_REFS["smith2017"]],
                )
            )
        remediation.append(
            Remediation(
                action="reduce_lr_on_plateau",
                detail="Decay the learning rate when the loss stalls (10x is usual), or switch to a schedule "
                "(cosine, step); if it was already decayed, the run may simply have converged.",
                snippet="sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=10)\n"
                "# each epoch: sched.step(val_loss)",
                references=[RUN_REFS["plateau_scheduler"]],
                params={"factor": 0.1},
            )
        )
        if not stuck and s["lr"]:
            remediation.append(lower_lr_remediation(s["lr"], 10, "the step may be too large to settle lower."))
        return [
            Finding(
                rule=RULE_ID,
                severity="warning" if stuck else "info",
                title=f"Loss flat since step {start}{' (no progress at all)' if stuck else ''}",
                message=message,
                layers=[],
                step=start,
                last_step=ctx.last_step,
                evidence={
                    "plateau_steps": flat,
                    "logged_losses_since": s["since"],
                    "best_smoothed_loss": ref,
                    "current_smoothed_loss": s["last"],
                    "initial_smoothed_loss": initial,
                    "progress_fraction": progress,
                    "lr": s["lr"],
                },
                thresholds={
                    "improve_rel": IMPROVE_REL,
                    "improve_standard_errors": IMPROVE_SE,
                    "min_steps": MIN_STEPS,
                    "min_logged": MIN_LOGGED,
                    "run_fraction": RUN_FRACTION,
                    "no_progress": NO_PROGRESS,
                },
                remediation=remediation,
                confidence=0.6,
            )
        ]
