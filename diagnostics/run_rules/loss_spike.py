"""loss_spike: the loss jumps far above its recent level and comes back within a few tens of steps (a transient)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
from gradhealth.report import Finding, Remediation

from .chunk import ChunkView, forward_fill
from .common import RUN_REFS, RunContext, clip_remediation, fmt, merged_note, span, steps_where
from .gradient_spike import top_contributors
from .loss_divergence import SUSTAIN_STEPS
from .rolling import MAX_EPISODES, dec_array, enc_array, rolling_diff_sigma, rolling_median_mad

RULE_ID = "loss_spike"

# Log space (a spike is a ratio). The level is the median of the previous 9 positive logged losses:
# short, so an early-training fall barely lags it. The noise is the robust sigma of the differences of
# the previous 51 log-losses (rolling.rolling_diff_sigma): a trend is not noise, so a warm-up spike on
# a falling loss is measured against the minibatch scatter alone, not against the fall.
LEVEL_N = 9
NOISE_WINDOW = 51
MIN_HISTORY = 20
# A spike clears both bars: 5x the level and 6 robust sigmas above it. Minibatch losses of healthy
# runs reach 3-6x their level with heavy tails (a lucky batch, a hard one), so neither bar alone holds.
MIN_RATIO = 5.0
MIN_Z = 6.0
# Back: within 2x (or 3 sigma) of the level before the spike, for 3 logged losses in a row. A rise that
# is not back within loss_divergence's 50 steps is that rule's (a divergence), not a transient.
BACK_RATIO = 2.0
BACK_Z = 3.0
RECOVER_N = 3
MAX_RECOVERY_STEPS = SUSTAIN_STEPS
GRAD_LEVEL_N = 9  # the global gradient norm's level before the spike: the median of its previous 9


@dataclass
class Spike:
    """One transient: where it began, its worst loss and gradient norm, and when the loss was back."""

    start: int
    last: int  # the last logged loss still above the back bar
    level: float  # the loss level before it (median of the previous 9)
    sigma: float  # the log-loss noise before it
    grad_level: float | None  # the global gradient norm's level before it
    peak_step: int
    peak_loss: float
    grad_peak: float | None = None
    grad_peak_step: int | None = None
    layers: list[int] = field(default_factory=list)  # the top gradient layers at the gradient peak
    recovered: int | None = None  # the first of the logged losses back near the level
    n: int = 1  # logged losses above the back bar
    merged: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON object."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Spike:
        """Read what to_json() wrote."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def back_bar(self) -> float:
        """log(loss / level) under which the loss counts as back."""
        return max(math.log(BACK_RATIO), BACK_Z * self.sigma)


@dataclass
class LossSpikeState:
    """The recent log-losses and log global norms, the spike under way and the recovered ones."""

    hist: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the last 52 positive log-losses
    ghist: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the last 9 log global norms
    open: Spike | None = None
    back_n: int = 0  # consecutive logged losses back near the level while a spike is open
    closed: list[Spike] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON object (added in state version 1 as an optional rule state: absent reads as fresh)."""
        return {
            "hist": enc_array(self.hist),
            "ghist": enc_array(self.ghist),
            "open": self.open.to_json() if self.open is not None else None,
            "back_n": self.back_n,
            "closed": [s.to_json() for s in self.closed],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> LossSpikeState:
        """Read what to_json() wrote (None: a fresh state)."""
        if not d:
            return cls()
        return cls(
            hist=dec_array(d.get("hist", [])),
            ghist=dec_array(d.get("ghist", [])),
            open=Spike.from_json(d["open"]) if d.get("open") is not None else None,
            back_n=int(d.get("back_n", 0)),
            closed=[Spike.from_json(s) for s in d.get("closed", [])],
        )


@dataclass(frozen=True)
class _Levels:
    """Per positive logged loss of a chunk: its row, log value, level, noise and the gradient level before it."""

    rows: np.ndarray
    x: np.ndarray
    level: np.ndarray
    sigma: np.ndarray
    grad_level: np.ndarray


class LossSpikeRule:
    """Robust, trend-blind level and noise of log-loss; a spike opens, recovery closes it into a warning."""

    rule_id: ClassVar[str] = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.st = LossSpikeState.from_json(state)

    def update(self, v: ChunkView) -> None:
        """Vectorised levels per chunk; Python work only at spikes and while one is open."""
        lv = self._levels(v)
        st = self.st
        excess = lv.x - lv.level
        bar = np.maximum(math.log(MIN_RATIO), MIN_Z * lv.sigma)
        spike = np.isfinite(lv.level) & np.isfinite(lv.sigma) & (excess > bar)
        for k in range(len(lv.x)):
            if st.open is None and not spike[k]:
                continue
            row = int(lv.rows[k])
            if st.open is None:
                self._open(v, row, lv, k)
            else:
                self._follow(v, row, float(lv.x[k]))
        st.hist = np.concatenate([st.hist, lv.x])[-(NOISE_WINDOW + 1) :]

    def _levels(self, v: ChunkView) -> _Levels:
        st = self.st
        norms = v.global_norm
        gok = np.isfinite(norms) & (norms > 0)
        glog = np.log(norms[gok])
        upto, _ = rolling_median_mad(st.ghist, glog, GRAD_LEVEL_N, include_current=True, min_count=1)
        after = np.full(v.n, np.nan)
        after[gok] = upto  # the level once each row's norm is in
        carry = float(np.median(st.ghist)) if len(st.ghist) else math.nan
        grad_level = np.concatenate([[carry], forward_fill(after, carry)[:-1]])  # the level before each row
        st.ghist = np.concatenate([st.ghist, glog])[-GRAD_LEVEL_N:]
        pos = v.fin_loss > 0
        rows = v.fin_rows[pos]
        x = np.log(v.fin_loss[pos])
        level, _ = rolling_median_mad(st.hist, x, LEVEL_N, include_current=False, min_count=LEVEL_N)
        sigma = rolling_diff_sigma(st.hist, x, NOISE_WINDOW, MIN_HISTORY)
        return _Levels(rows, x, level, sigma, grad_level[rows])

    def _open(self, v: ChunkView, row: int, lv: _Levels, k: int) -> None:
        g = float(lv.grad_level[k])
        spike = Spike(
            start=int(v.steps[row]),
            last=int(v.steps[row]),
            level=math.exp(float(lv.level[k])),
            sigma=float(lv.sigma[k]),
            grad_level=math.exp(g) if math.isfinite(g) else None,
            peak_step=int(v.steps[row]),
            peak_loss=float(v.loss[row]),
        )
        self.st.open, self.st.back_n = spike, 0
        self._track_grad(spike, v, row)

    def _follow(self, v: ChunkView, row: int, x: float) -> None:
        """One logged loss while a spike is open: still up, back near the level, or gone on too long."""
        st = self.st
        spike = st.open
        assert spike is not None
        step = int(v.steps[row])
        if x - math.log(spike.level) < spike.back_bar():
            st.back_n += 1
            spike.recovered = step if st.back_n == 1 else spike.recovered
            if st.back_n >= RECOVER_N and spike.recovered is not None:
                if spike.recovered - spike.start <= MAX_RECOVERY_STEPS:
                    self._close(spike)
                else:  # back, but after loss_divergence's 50 steps: that rule's recovered divergence
                    st.open, st.back_n = None, 0
            return
        if step - spike.start > MAX_RECOVERY_STEPS:
            st.open, st.back_n = None, 0  # not a transient: loss_divergence's case
            return
        st.back_n, spike.recovered = 0, None
        spike.last, spike.n = step, spike.n + 1
        if float(v.loss[row]) > spike.peak_loss:
            spike.peak_loss, spike.peak_step = float(v.loss[row]), step
        self._track_grad(spike, v, row)

    def _track_grad(self, spike: Spike, v: ChunkView, row: int) -> None:
        norm = float(v.global_norm[row])
        if math.isfinite(norm) and (spike.grad_peak is None or norm > spike.grad_peak):
            spike.grad_peak, spike.grad_peak_step = norm, int(v.steps[row])
            spike.layers = top_contributors(v.grad[row], limit=5)

    def _close(self, spike: Spike) -> None:
        st = self.st
        st.open, st.back_n = None, 0
        if len(st.closed) < MAX_EPISODES:
            st.closed.append(spike)
            return
        last = st.closed[-1]  # keep the first few apart; fold the rest into the last one kept
        last.merged += 1 + spike.merged
        last.n += spike.n
        last.last, last.recovered = spike.last, spike.recovered
        if spike.peak_loss / spike.level > last.peak_loss / last.level:
            last.peak_step, last.peak_loss, last.level = spike.peak_step, spike.peak_loss, spike.level

    def summary(self) -> dict[str, float | int | None]:
        """No run-level numbers of its own."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON state: O(1) history and the (bounded) recovered spikes."""
        return self.st.to_json()

    def findings(self, ctx: RunContext) -> list[Finding]:
        """One warning per recovered spike (a spike still open is either recovering or loss_divergence's)."""
        return [spike_finding(s, ctx) for s in self.st.closed]


def _advice(s: Spike, ctx: RunContext) -> list[Remediation]:
    return [
        clip_remediation(ctx),
        Remediation(
            action="add_warmup",
            detail="If the spike came early or right after a learning-rate change, ramp the learning rate up more "
            "gradually: a transient spike means a step left the region where the loss is smooth.",
            snippet="sched = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=500)",
            references=[RUN_REFS["goyal2017"]],
            params={"warmup_steps": 500},
        ),
        Remediation(
            action="inspect_batch",
            detail=f"If it recurs at the same data, inspect the batches around step {s.start} (outliers, label "
            "noise) and skip them; if spikes recur and grow, restore a checkpoint from before them.",
            references=[RUN_REFS["chowdhery2022"]],
            params={"step": s.start},
        ),
    ]


def spike_finding(s: Spike, ctx: RunContext) -> Finding:
    """The warning for one recovered loss spike."""
    layers = [ctx.layers[i] for i in s.layers]
    ratio = s.peak_loss / s.level
    grad_ratio = s.grad_peak / s.grad_level if s.grad_peak is not None and s.grad_level else None
    where = steps_where(s.start, s.last)
    message = (
        f"The loss spiked to {fmt(s.peak_loss)} at step {s.peak_step}, {fmt(ratio)}x its level {fmt(s.level)} "
        f"before the spike, and was back near that level from step {s.recovered}."
    )
    if grad_ratio is not None:
        message += f" The global gradient norm peaked at {fmt(grad_ratio)}x its level (step {s.grad_peak_step})"
        message += f", mostly in {span(layers)}." if layers else "."
    message += merged_note(s.merged, "spike")
    recover = s.recovered - s.start if s.recovered is not None else None
    return Finding(
        rule=RULE_ID,
        severity="warning",
        title=f"Transient loss spike at {where}, recovered",
        message=message,
        layers=layers,
        step=s.start,
        last_step=s.last,
        evidence={
            "peak_step": s.peak_step,
            "peak_loss": s.peak_loss,
            "loss_level_before": s.level,
            "peak_ratio": ratio,
            "robust_z": math.log(ratio) / s.sigma if s.sigma > 0 else None,
            "steps_to_recover": recover,
            "recovered_step": s.recovered,
            "spiking_losses": s.n,
            "peak_global_grad_norm": s.grad_peak,
            "grad_norm_peak_ratio": grad_ratio,
            "merged_spikes": s.merged,
        },
        thresholds={
            "min_ratio": MIN_RATIO,
            "min_robust_z": MIN_Z,
            "back_ratio": BACK_RATIO,
            "back_z": BACK_Z,
            "recover_logged_losses": RECOVER_N,
            "max_recovery_steps": MAX_RECOVERY_STEPS,
            "noise_window": NOISE_WINDOW,
        },
        remediation=_advice(s, ctx),
        confidence=0.75,
    )
