"""loss_plateau: the smoothed loss has not improved meaningfully for a long stretch of the run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from gradhealth.report import Finding, Remediation

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
# "Long": at least 300 optimizer steps and 50 logged steps (logged losses, each counted as the stride it
# was logged at: a client recording one step in 10 reaches it after 5), and a quarter of the run so far (a run at
# step 100k is not plateaued because its last 300 steps were flat; one improving like a power law
# loss ~ t^-0.1 still gains 3.5% over its last quarter).
MIN_STEPS = 300
MIN_LOGGED = 50
RUN_FRACTION = 0.25
# Less than 5% below the first smoothed loss overall means it never learned: a warning, not info.
NO_PROGRESS = 0.05


@dataclass
class LossPlateauState:
    """The smoothed loss at the start, at the last meaningful improvement, and now."""

    first_step: int | None = None
    initial: float | None = None  # the first smoothed loss
    ref: float | None = None  # the smoothed loss at the last meaningful improvement
    ref_step: int | None = None
    since: int = 0  # logged steps since that improvement (the sum of the strides of the losses logged since)
    last: float | None = None  # the current smoothed loss
    last_step: int | None = None
    lr_at_ref: float | None = None
    lr: float | None = None  # the last logged lr
    n: int = 0  # finite logged losses seen
    # the step of the first of them: the first smoothed loss stands for the losses from there, so a plateau
    # from the start begins there whatever the stride (absent from older states: the smoothed loss's own step)
    first_logged: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON object (the keys of state version 1)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> LossPlateauState:
        """Read what to_json() wrote (None: a fresh state)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d}) if d else cls()


class LossPlateauRule:
    """The step of the last meaningful improvement; a plateau is a long time since it."""

    rule_id: ClassVar[str] = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.st = LossPlateauState.from_json(state)

    def update(self, v: ChunkView) -> None:
        """O(1) per finite logged loss, on the shared 51-point rolling median."""
        st = self.st
        for k in range(len(v.fin_loss)):
            st.n += 1
            if st.n == 1:
                st.first_logged = int(v.fin_steps[k])
            m = float(v.loss_med_long[k])
            if not math.isfinite(m):
                continue
            step = int(v.fin_steps[k])
            lr = v.lr_filled[v.fin_rows[k]]
            st.lr = float(lr) if math.isfinite(lr) else None
            if st.first_step is None:
                st.first_step, st.initial = step, m
            se = 1.253 * MAD_TO_SIGMA * float(v.loss_mad_long[k]) / math.sqrt(min(st.n, WINDOW))
            tol = max(IMPROVE_REL * abs(st.ref or 0.0), IMPROVE_SE * se)
            if st.ref is None:
                start = st.first_logged if st.first_logged is not None else step
                st.ref, st.ref_step, st.since, st.lr_at_ref = m, start, 0, st.lr
            elif m < st.ref - tol:
                st.ref, st.ref_step, st.since, st.lr_at_ref = m, step, 0, st.lr
            else:
                st.since += int(v.stride[v.fin_rows[k]])
            st.last, st.last_step = m, step

    def summary(self) -> dict[str, float | int | None]:
        """No run-level numbers of its own."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON state: a handful of numbers."""
        return self.st.to_json()

    def _plateau(self) -> bool:
        st = self.st
        if st.ref_step is None or st.last_step is None or st.first_step is None:
            return False
        flat = st.last_step - st.ref_step
        return flat >= MIN_STEPS and st.since >= MIN_LOGGED and flat >= RUN_FRACTION * (st.last_step - st.first_step)

    def findings(self, ctx: RunContext) -> list[Finding]:
        """At most one finding: the current plateau, if any (an improvement ends it)."""
        return [plateau_finding(self.st, ctx)] if self._plateau() else []


def _progress(st: LossPlateauState) -> float:
    """How far the best smoothed loss is below the first, as a fraction of it."""
    initial, ref = st.initial, st.ref
    assert ref is not None
    return (initial - ref) / abs(initial) if initial else 0.0


def _message(st: LossPlateauState, stuck: bool) -> str:
    progress = _progress(st)
    if stuck:
        return (
            f"The loss has not improved since step {st.ref_step}: its smoothed value is {fmt(st.last)}, within "
            f"{progress:.1%} of where the run started ({fmt(st.initial)}). The model is not learning."
        )
    assert st.last_step is not None and st.ref_step is not None
    return (
        f"No meaningful improvement for {st.last_step - st.ref_step} steps (since step {st.ref_step}): the smoothed "
        f"loss is {fmt(st.last)}, best {fmt(st.ref)}, down {progress:.0%} from {fmt(st.initial)} at the start."
    )


def _advice(st: LossPlateauState, stuck: bool) -> list[Remediation]:
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
    if not stuck and st.lr:
        remediation.append(lower_lr_remediation(st.lr, 10, "the step may be too large to settle lower."))
    return remediation


def plateau_finding(st: LossPlateauState, ctx: RunContext) -> Finding:
    """The finding for the current plateau: a warning when the run never made progress, else info."""
    start = st.ref_step
    assert start is not None and st.last_step is not None
    progress = _progress(st)
    stuck = progress < NO_PROGRESS
    return Finding(
        rule=RULE_ID,
        severity="warning" if stuck else "info",
        title=f"Loss flat since step {start}{' (no progress at all)' if stuck else ''}",
        message=_message(st, stuck),
        layers=[],
        step=start,
        last_step=ctx.last_step,
        evidence={
            "plateau_steps": st.last_step - start,
            "logged_losses_since": st.since,  # logged steps: losses counted at their stride (1 each when not sent)
            "best_smoothed_loss": st.ref,
            "current_smoothed_loss": st.last,
            "initial_smoothed_loss": st.initial,
            "progress_fraction": progress,
            "lr": st.lr,
        },
        thresholds={
            "improve_rel": IMPROVE_REL,
            "improve_standard_errors": IMPROVE_SE,
            "min_steps": MIN_STEPS,
            "min_logged": MIN_LOGGED,
            "run_fraction": RUN_FRACTION,
            "no_progress": NO_PROGRESS,
        },
        remediation=_advice(st, stuck),
        confidence=0.6,
    )
