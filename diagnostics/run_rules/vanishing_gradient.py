"""vanishing_gradient (run): the first layer's gradient falls ever further behind the last layer's."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from gradhealth.report import Finding, Remediation, Severity

from ..rules.vanishing_gradient import ERROR_RATIO, WARNING_RATIO
from .chunk import ChunkView
from .common import REFS, RunContext, fmt, label, span
from .rolling import Episode, Episodes, dec_array, enc, enc_array, last_positive, rolling_median_mad

RULE_ID = "vanishing_gradient"

# The signal is rho = log10(grad_norm[first] / grad_norm[last]) for the first and last layers that
# had a gradient when the run started. Layer sizes make rho's starting value arbitrary, so the rule
# watches its change: the baseline is the median of the first 21 values, the current level a rolling
# median of 21 (minibatch noise in one step's ratio is a factor of ~2; a median of 21 removes it).
BASELINE_N = 21
WINDOW = 21
# Same bars as the checkpoint rule: the first layer's gradient falling 100x further behind the
# last layer's is a warning, 1000x an error (AUTOTRAINER flags 1e-3; healthy nets stay within 10x:
# on 24 healthy calibration runs the rolling ratio moved at most 10^0.25 below its baseline).
WARN_DECADES = -math.log10(WARNING_RATIO)
ERROR_DECADES = -math.log10(ERROR_RATIO)
# Sustained: 10 consecutive logged steps spanning 50 optimizer steps; released after 10 clear ones.
CONFIRM_N = 10
MIN_SPAN = 50
RELEASE_N = 10
MAX_LAYERS = 20


def pow10(decades: float) -> float:
    """10**x for reporting, capped below float overflow (norms span at most ~630 decades)."""
    return float(10.0 ** min(decades, 300.0))


@dataclass
class VanishingState:
    """The layer pair watched, the baseline of their log-ratio, its rolling window and the episodes."""

    pair: list[int] | None  # [first, last] layer with a gradient when the run started
    base_vals: list[float]  # the first BASELINE_N log-ratios (until the baseline is known)
    baseline: float | None  # their median
    hist: np.ndarray  # the last WINDOW log-ratios
    base_sum: np.ndarray  # per layer: sum of log10 grad norms over the baseline steps
    base_cnt: np.ndarray  # and how many there were
    last_log: np.ndarray  # per layer: log10 of its last positive gradient norm
    last_drop: float | None  # the last drop of the rolling ratio below the baseline (decades)
    episodes: Episodes

    @classmethod
    def from_json(cls, st: dict[str, Any] | None, num_layers: int) -> VanishingState:
        """Read what to_json() wrote (None: a fresh state)."""
        st = st or {}
        L = num_layers
        return cls(
            pair=st.get("pair"),
            base_vals=list(st.get("base_vals", [])),
            baseline=st.get("baseline"),
            hist=dec_array(st.get("hist", [])),
            base_sum=dec_array(st["base_sum"]) if "base_sum" in st else np.zeros(L),
            base_cnt=np.array(st.get("base_cnt", [0] * L), dtype=np.int64),
            last_log=dec_array(st["last_log"]) if "last_log" in st else np.full(L, np.nan),
            last_drop=st.get("last_drop"),
            episodes=Episodes(CONFIRM_N, RELEASE_N, MIN_SPAN, higher_is_worse=False, state=st.get("episodes")),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON object (the keys of state version 1): O(L) per-layer baselines and last values, a 21-value window."""
        return {
            "pair": self.pair,
            "base_vals": self.base_vals if self.baseline is None else [],
            "baseline": self.baseline,
            "hist": enc_array(self.hist),
            "base_sum": enc_array(self.base_sum),
            "base_cnt": self.base_cnt.tolist(),
            "last_log": enc_array(self.last_log),
            "last_drop": enc(self.last_drop) if self.last_drop is not None else None,
            "episodes": self.episodes.state(),
        }


def first_pair(g: np.ndarray) -> list[int] | None:
    """The first and last layer with a gradient at the first row where at least two have one."""
    rows = np.flatnonzero(((g > 0) & (g < np.inf)).sum(axis=1) >= 2)
    if not len(rows):
        return None
    cols = np.flatnonzero((g[rows[0]] > 0) & (g[rows[0]] < np.inf))
    return [int(cols[0]), int(cols[-1])]


class VanishingTrendRule:
    """Track the drop of log10(first/last gradient norm) against its start-of-run baseline."""

    rule_id: ClassVar[str] = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.L = num_layers
        self.st = VanishingState.from_json(state, num_layers)

    def update(self, v: ChunkView) -> None:
        """Per chunk: log-norms of two columns and rolling medians, then O(1) per step."""
        st = self.st
        g = v.grad
        if st.pair is None:
            st.pair = first_pair(g)
        if st.pair is not None:
            self._track(v, st.pair)
        last = last_positive(g, np.full(self.L, np.nan))
        seen = np.isfinite(last)
        st.last_log[seen] = np.log10(last[seen])

    def _track(self, v: ChunkView, pair: list[int]) -> None:
        st = self.st
        f, last = pair
        gf, gl = v.grad[:, f], v.grad[:, last]
        rows = np.flatnonzero((gf > 0) & (gf < np.inf) & (gl > 0) & (gl < np.inf))
        if not len(rows):
            return
        rho = np.log10(gf[rows]) - np.log10(gl[rows])
        self._baseline(v, rows, rho)
        med, _ = rolling_median_mad(st.hist, rho, WINDOW, include_current=True, min_count=WINDOW)
        st.hist = np.concatenate([st.hist, rho])[-WINDOW:]
        if st.baseline is None:
            return
        drop = med - st.baseline
        ok = np.isfinite(drop)
        if ok.any():
            st.last_drop = float(drop[ok][-1])
        for k in np.flatnonzero(ok).tolist():
            cond = bool(drop[k] <= -WARN_DECADES)
            if not cond and st.episodes.idle:
                continue
            event = st.episodes.feed(int(v.steps[rows[k]]), cond, float(drop[k]), weight=int(v.stride[rows[k]]))
            if event == "close":
                row = v.grad[rows[k]]
                with np.errstate(divide="ignore", invalid="ignore"):
                    cur = np.where((row > 0) & (row < np.inf), np.log10(row), np.nan)
                st.episodes.closed[-1].layers = self._weak(cur)

    def _baseline(self, v: ChunkView, rows: np.ndarray, rho: np.ndarray) -> None:
        """The first BASELINE_N log-ratios and per-layer log norms (at most 21 rows in a whole run)."""
        st = self.st
        for k, r in enumerate(rows.tolist()):
            if st.baseline is not None:
                break
            st.base_vals.append(float(rho[k]))
            pos = (v.grad[r] > 0) & (v.grad[r] < np.inf)
            st.base_sum[pos] += np.log10(v.grad[r][pos])
            st.base_cnt += pos
            if len(st.base_vals) == BASELINE_N:
                st.baseline = float(np.median(st.base_vals))

    def _base_layer(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.st.base_cnt > 0, self.st.base_sum / np.maximum(self.st.base_cnt, 1), np.nan)

    def _weak(self, cur: np.ndarray) -> list[int]:
        """Layers whose own gradient fell 100x further behind (vs their baseline) than the last layer's."""
        base = self._base_layer()
        assert self.st.pair is not None
        f, last = self.st.pair
        rel = (cur - base) - (cur[last] - base[last])
        weak = np.flatnonzero(np.isfinite(rel) & (rel <= -WARN_DECADES)).tolist()
        return sorted(set(weak) | {f})[:MAX_LAYERS]

    def summary(self) -> dict[str, float | int | None]:
        """No run-level numbers of its own."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON state: O(L) per-layer baselines and last values, a 21-value window."""
        return self.st.to_json()

    def findings(self, ctx: RunContext) -> list[Finding]:
        """Ongoing: warning (100x) or error (1000x); recovered episodes: info."""
        st = self.st
        out = [self._finding(ep, "info", ctx, ep.layers or []) for ep in st.episodes.closed]
        ep = st.episodes.open
        if ep is not None:
            severity: Severity = "error" if ep.peak <= -ERROR_DECADES else "warning"
            out.append(self._finding(ep, severity, ctx, self._weak(st.last_log)))
        return out

    def _finding(self, ep: Episode, severity: Severity, ctx: RunContext, weak: list[int]) -> Finding:
        st = self.st
        assert st.pair is not None and st.baseline is not None
        first_name, last_name = ctx.layers[st.pair[0]], ctx.layers[st.pair[1]]
        factor = pow10(-ep.peak)
        ongoing = severity != "info"
        layers = [ctx.layers[i] for i in weak]
        message = (
            f"From step {ep.start} the gradient of {label(first_name)} fell {fmt(factor)}x further behind that of "
            f"{label(last_name)} than at the start of the run (worst at step {ep.peak_step}; start-of-run ratio "
            f"{fmt(pow10(st.baseline))})"
        )
        message += f"; still {fmt(pow10(-st.last_drop))}x at step {ctx.last_step}." if ongoing and st.last_drop else "."
        if not ongoing:
            message += f" It recovered after step {ep.last}."
        if len(layers) > 1:
            message += f" Layers falling behind: {span(layers)}."
        return Finding(
            rule=RULE_ID,
            severity=severity,
            title=f"Gradient vanishing toward the input since step {ep.start}",
            message=message,
            layers=layers,
            step=ep.start,
            last_step=ctx.last_step if ongoing else ep.last,
            evidence={
                "first_layer": first_name,
                "last_layer": last_name,
                "baseline_first_to_last_ratio": pow10(st.baseline),
                "worst_drop_factor": factor,
                "worst_step": ep.peak_step,
                "current_drop_factor": pow10(-st.last_drop) if st.last_drop is not None else None,
            },
            thresholds={
                "warning_drop": 1 / WARNING_RATIO,
                "error_drop": 1 / ERROR_RATIO,
                "sustain_logged_steps": CONFIRM_N,
                "sustain_steps": MIN_SPAN,
            },
            remediation=_advice(ep.start),
            confidence=0.75,
        )


def _advice(start: int) -> list[Remediation]:
    return [
        Remediation(
            action="check_weight_decay_and_saturation",
            detail="A ratio that collapses during training (not at init) means the layers in between have "
            "started to attenuate the signal: weights shrinking under weight decay, or tanh/sigmoid units "
            "saturating as weights grow. Lower the weight decay of those layers or the learning rate.",
            snippet="optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)",
            references=[REFS["glorot2010"]],
            params={"weight_decay": 0.01},
        ),
        Remediation(
            action="add_normalization_or_residuals",
            detail="Add BatchNorm/LayerNorm between layers, or residual connections, so the gradient has a "
            "short path to the first layers.",
            references=[REFS["ioffe2015"], REFS["ba2016"], REFS["he2016"]],
        ),
        Remediation(
            action="analyze_checkpoint",
            detail=f"Run `gradhealth analyze` on a checkpoint from after step {start}: it reports which "
            "activations are saturated or dead and the per-layer gradient profile.",
            params={"step": start},
        ),
    ]
