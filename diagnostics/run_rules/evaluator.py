"""RunEvaluator: feeds each arriving chunk to every run rule once, and keeps a JSON state between chunks."""

from __future__ import annotations

import copy
import json
import logging
import math
from typing import Any

import numpy as np
from gradhealth.report import SEVERITY_ORDER, Finding

from .activation_rules import DeadReluRunRule, SaturatedActivationRunRule
from .chunk import ChunkView, LogChunk, forward_fill, global_norm, new_rows, update_ratios
from .common import RunContext, one_lower_lr
from .gradient_spike import GradientSpikeRule
from .loss_divergence import LossDivergenceRule
from .loss_plateau import LossPlateauRule
from .loss_spike import LossSpikeRule
from .non_finite import NonFiniteRule
from .oscillating_loss import OscillatingLossRule
from .protocol import RuleSummary, RunRule
from .rolling import dec, dec_array, enc, enc_array, opt_float, rolling_median_mad
from .stalled_layer import StalledLayerRule
from .update_ratio import UpdateRatioRule
from .vanishing_gradient import VanishingTrendRule

STATE_VERSION = 1
LOSS_WINDOW = 9  # shared smoothing of the loss: a rolling median of 9 logged losses
# and its noise: the MAD of the last 51 (a 9-point MAD is itself too noisy to scale thresholds with)
NOISE_WINDOW = 51

RULES: tuple[type[RunRule], ...] = (
    NonFiniteRule,
    GradientSpikeRule,
    LossDivergenceRule,
    VanishingTrendRule,
    StalledLayerRule,
    UpdateRatioRule,
    LossPlateauRule,
    OscillatingLossRule,
    LossSpikeRule,
    DeadReluRunRule,
    SaturatedActivationRunRule,
)
RUN_RULE_IDS: tuple[str, ...] = tuple(rule.rule_id for rule in RULES)
log = logging.getLogger(__name__)


class RunEvaluator:
    """Incremental diagnosis of a training run: update() per chunk, findings() at any time."""

    def __init__(
        self, layers: list[str], state: dict[str, Any] | None = None, activations: list[dict[str, str]] | None = None
    ) -> None:
        self.layers = list(layers)
        self.activations = tuple(a["name"] for a in activations or [])  # watch(activations=...): name, kind
        self.activation_kinds = tuple(a["kind"] for a in activations or [])
        L = len(self.layers)
        if L == 0:
            raise ValueError("a run needs at least one layer")
        st = copy.deepcopy(state) if state else {}  # never alias the caller's dict
        if st and (st.get("version") != STATE_VERSION or st.get("num_layers") != L):
            raise ValueError(f"state is for {st.get('num_layers')} layers (version {st.get('version')}), not {L}")
        self.last_step: int | None = st.get("last_step")
        self.first_step: int | None = st.get("first_step")
        self.steps_seen = int(st.get("steps_seen", 0))
        self.last_lr = dec(st.get("last_lr"))
        self.max_lr: float | None = st.get("max_lr")
        self.last_loss: float | None = dec(st["last_loss"]) if st.get("last_loss") is not None else None
        self.best_loss: float | None = st.get("best_loss")
        self.last_norm: float | None = st.get("last_norm")
        self.loss_hist = dec_array(st.get("loss_hist", []))  # the last 51 finite logged losses
        rules_state = st.get("rules", {})
        self.rules: list[RunRule] = [rule(L, rules_state.get(rule.rule_id)) for rule in RULES]
        self.failures: dict[str, str] = dict(st.get("failures", {}))  # rule id -> what went wrong, first time

    def _failed(self, rule: RunRule, where: str, exc: Exception) -> None:
        """A rule's bug costs that rule's verdicts, never the batch: logged, and said in the report."""
        log.exception("run rule %s failed in %s", rule.rule_id, where)
        self.failures.setdefault(
            rule.rule_id,
            f"internal error in {where} at steps up to {self.last_step}: {type(exc).__name__}: {str(exc)[:200]}; "
            "its findings may be missing or stale (this is a bug, please report it)",
        )

    def update(self, chunk: LogChunk) -> None:
        """Evaluate the rows of `chunk` after the last step seen; earlier (late, repeated) rows are ignored."""
        cols = new_rows(chunk, self.last_step, len(self.layers))
        steps = cols["steps"]
        if not len(steps):
            return
        view = self._view(cols)
        for index, rule in enumerate(self.rules):
            before = rule.state()
            try:
                rule.update(view)
            except Exception as exc:
                self._failed(rule, "update", exc)
                self.rules[index] = type(rule)(len(self.layers), before)  # as before the chunk, not half-updated
        self._summarise(view)

    def _view(self, cols: dict[str, np.ndarray]) -> ChunkView:
        loss, logged = cols["loss"], cols["loss_logged"]
        fin_rows = np.flatnonzero(logged & np.isfinite(loss))
        fin_loss = loss[fin_rows]
        med, mad = rolling_median_mad(
            self.loss_hist, fin_loss, LOSS_WINDOW, include_current=True, min_count=LOSS_WINDOW
        )
        med_long, mad_long = rolling_median_mad(
            self.loss_hist, fin_loss, NOISE_WINDOW, include_current=True, min_count=LOSS_WINDOW
        )
        lr_filled = forward_fill(cols["lr"], self.last_lr)
        upd_rows, upd_ratio = update_ratios(cols["update_norm"], cols["weight_norm"])
        return ChunkView(
            steps=cols["steps"],
            loss=loss,
            loss_logged=logged,
            lr=cols["lr"],
            lr_filled=lr_filled,
            lr_prev=np.concatenate([[self.last_lr], lr_filled[:-1]]),
            grad=cols["grad_norm"],
            grad_max=cols["grad_max_abs"],
            nonfinite=cols["nonfinite"],
            weight=cols["weight_norm"],
            update=cols["update_norm"],
            upd_rows=upd_rows,
            upd_ratio=upd_ratio,
            global_norm=global_norm(cols["grad_norm"], cols["nonfinite"]),
            fin_rows=fin_rows,
            fin_steps=cols["steps"][fin_rows],
            fin_loss=fin_loss,
            loss_med=med,
            loss_mad=mad,
            loss_med_long=med_long,
            loss_mad_long=mad_long,
            stride=cols["stride"],
            activations=cols["activations"],
            activation_kinds=self.activation_kinds,
        )

    def _summarise(self, v: ChunkView) -> None:
        steps = v.steps
        self.first_step = int(steps[0]) if self.first_step is None else self.first_step
        self.last_step = int(steps[-1])
        self.steps_seen += len(steps)
        self.last_lr = float(v.lr_filled[-1])
        lrs = v.lr[np.isfinite(v.lr)]
        if len(lrs):
            self.max_lr = max(float(lrs.max()), self.max_lr if self.max_lr is not None else -math.inf)
        logged = np.flatnonzero(v.loss_logged)
        if len(logged):
            self.last_loss = float(v.loss[logged[-1]])
        meds = v.loss_med[np.isfinite(v.loss_med)]
        if len(meds):
            self.best_loss = min(float(meds.min()), self.best_loss if self.best_loss is not None else math.inf)
        norms = v.global_norm[np.isfinite(v.global_norm)]
        if len(norms):
            self.last_norm = float(norms[-1])
        self.loss_hist = np.concatenate([self.loss_hist, v.fin_loss])[-NOISE_WINDOW:]

    def _published(self) -> RuleSummary:
        """What the rules publish for the run: the only way one rule's numbers reach another (via RunContext)."""
        return {key: value for rule in self.rules for key, value in rule.summary().items()}

    def _context(self) -> RunContext:
        published = self._published()
        p90, calm = published["global_grad_norm_p90"], published["calm_grad_norm_p90"]
        clip = calm if calm else p90  # the calm part's p90; all norms' only for a state stored before it existed
        return RunContext(
            layers=self.layers,
            last_step=self.last_step,
            last_lr=opt_float(self.last_lr),
            max_norm=float(f"{clip:.2g}") if clip else None,
            activations=self.activations,
            norm_p90=float(f"{p90:.2g}") if p90 else None,
            calm_clip=bool(calm),
        )

    def findings(self) -> list[Finding]:
        """Current verdicts, worst first, then by step."""
        if self.last_step is None:
            return []
        ctx = self._context()
        found = []
        for rule in self.rules:
            try:
                found.extend(rule.findings(ctx))
            except Exception as exc:
                self._failed(rule, "findings", exc)
        if any(f.rule == "loss_divergence" and f.severity == "error" for f in found):
            found = [f for f in found if f.rule != "loss_plateau"]  # a diverged loss is not a plateau
        one_lower_lr(found)
        return sorted(found, key=lambda f: (-SEVERITY_ORDER[f.severity], f.step if f.step is not None else -1))

    def summary(self) -> dict[str, float | int | None]:
        """Run-level numbers for the report's metrics."""
        published = self._published()
        return {
            "steps_seen": self.steps_seen,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "last_loss": opt_float(self.last_loss) if self.last_loss is not None else None,
            "best_loss": self.best_loss,
            "last_lr": opt_float(self.last_lr),
            "max_lr": self.max_lr,
            "last_global_grad_norm": self.last_norm,
            "global_grad_norm_p50": published["global_grad_norm_p50"],
            "global_grad_norm_p90": published["global_grad_norm_p90"],
            "nonfinite_steps": published["nonfinite_steps"],
            "median_update_to_weight": published["median_update_to_weight"],
        }

    def state(self) -> dict[str, Any]:
        """JSON-serialisable (allow_nan=False) state; RunEvaluator(layers, state) continues exactly."""
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "num_layers": len(self.layers),
            "last_step": self.last_step,
            "first_step": self.first_step,
            "steps_seen": self.steps_seen,
            "last_lr": enc(self.last_lr),
            "max_lr": self.max_lr,
            "last_loss": enc(self.last_loss) if self.last_loss is not None else None,
            "best_loss": self.best_loss,
            "last_norm": self.last_norm,
            "loss_hist": enc_array(self.loss_hist),
            "rules": {rule.rule_id: rule.state() for rule in self.rules},
        }
        if self.failures:  # only then: a run without a rule bug keeps the stored format as it was
            state["failures"] = dict(self.failures)
        detached: dict[str, Any] = json.loads(json.dumps(state, allow_nan=False))
        return detached  # a detached copy, and proof that it serialises
