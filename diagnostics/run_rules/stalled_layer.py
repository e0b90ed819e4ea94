"""stalled_layer: a layer that had been learning stops getting gradients or updates (frozen mid-run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
from gradhealth.report import Finding, Remediation

from .chunk import ChunkView
from .column_runs import ColumnRuns
from .common import RUN_REFS, RunContext, span
from .rolling import MAX_EPISODES, dec_array, enc_array, last_positive

RULE_ID = "stalled_layer"

# A gradient norm of exactly 0 has no noisy explanation: the layer got no gradient at all (grad None:
# requires_grad off, a detached or unused branch, every unit dead). Five such logged steps in a row,
# spanning at least 20 optimizer steps, after at least 3 steps with a gradient, is a stall.
CONFIRM_N = 5
MIN_SPAN = 20
ACTIVE_MIN = 3
# Or the layer gets a gradient but its weights do not change at all (update_norm exactly 0) while
# other layers move: the optimizer skips it (not in a param group, lr 0 for its group) or every
# change rounds away. A merely small update is vanishing_gradient's or update_ratio's business.
# Updates are sampled every ~10th step, so the same five samples span ~50 steps. The SDK samples a
# small model one layer per row, so "other layers move" is read from each other layer's latest
# sample, not from the same row. This is a fault from the start too (an optimizer built without the
# layer's parameters), so it needs no learning before it.
MAX_GROUPS = MAX_EPISODES
MAX_LAYERS = 50


@dataclass
class StallGroup:
    """Layers whose stall of one kind began at the same step."""

    kind: str  # "grad": no gradient; "update": a gradient but no weight change
    start: int
    layers: list[int] = field(default_factory=list)
    ended: dict[str, int] = field(default_factory=dict)  # layer (a JSON key: a string) -> its last stalled step
    before: dict[str, float | None] = field(default_factory=dict)  # layer -> its gradient norm before the stall

    def to_json(self) -> dict[str, Any]:
        """JSON object."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StallGroup:
        """Read what to_json() wrote."""
        return cls(
            d["kind"], d["start"], list(d.get("layers", [])), dict(d.get("ended", {})), dict(d.get("before", {}))
        )


@dataclass
class StalledLayerState:
    """Per-layer run counters of both kinds, each layer's last gradient, and the (bounded) groups."""

    grad_runs: ColumnRuns
    update_runs: ColumnRuns
    last_grad: np.ndarray  # the last non-zero gradient norm of each layer (NaN before any)
    # per layer, whether its latest sampled update moved its weights (1), did not (0), or none yet (NaN);
    # absent from states written before it: those start with none yet
    last_moved: np.ndarray
    groups: list[StallGroup]
    dropped: int = 0  # groups not kept (MAX_GROUPS)

    @classmethod
    def from_json(cls, st: dict[str, Any] | None, num_layers: int) -> StalledLayerState:
        """Read what to_json() wrote (None: a fresh state)."""
        st = st or {}
        return cls(
            grad_runs=ColumnRuns(num_layers, CONFIRM_N, MIN_SPAN, ACTIVE_MIN, st.get("grad_runs")),
            update_runs=ColumnRuns(
                num_layers, CONFIRM_N, MIN_SPAN, ACTIVE_MIN, st.get("update_runs"), need_active=False
            ),
            last_grad=dec_array(st["last_grad"]) if "last_grad" in st else np.full(num_layers, np.nan),
            groups=[StallGroup.from_json(g) for g in st.get("groups", [])],
            dropped=int(st.get("dropped", 0)),
            last_moved=dec_array(st["last_moved"]) if "last_moved" in st else np.full(num_layers, np.nan),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON object (the keys of state version 1)."""
        return {
            "grad_runs": self.grad_runs.state(),
            "update_runs": self.update_runs.state(),
            "last_grad": enc_array(self.last_grad),
            "groups": [g.to_json() for g in self.groups],
            "dropped": self.dropped,
            "last_moved": enc_array(self.last_moved),
        }


class StalledLayerRule:
    """Per-layer runs of zero gradient (every step) and of no update (sampled steps); grouped by start step."""

    rule_id: ClassVar[str] = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.L = num_layers
        self.st = StalledLayerState.from_json(state, num_layers)

    def update(self, v: ChunkView) -> None:
        """Two vectorised ColumnRuns feeds per chunk."""
        st = self.st
        g = v.grad
        confirmed, ended = st.grad_runs.feed(v.steps, g == 0, g > 0)  # NaN (not measured) is neither
        self._record("grad", confirmed, ended, v)
        rows, ratio = v.upd_rows, v.upd_ratio
        u = v.update[rows]
        sampled = ~np.isnan(ratio)
        counted = sampled & self._others_moving(sampled, u) & (g[rows] > 0)  # zero gradients: the grad runs' case
        confirmed, ended = st.update_runs.feed(v.steps[rows], counted & (u == 0), counted & (u > 0))
        self._record("update", confirmed, ended, v)
        st.last_grad = last_positive(g, st.last_grad)

    def _others_moving(self, sampled: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(m, L): whether, at each sampled row, another layer's latest sampled update (this row or earlier) moved it."""
        st = self.st
        latest = np.vstack([st.last_moved[None, :], np.where(sampled, (u > 0).astype(np.float64), np.nan)])
        idx = np.where(~np.isnan(latest), np.arange(len(latest))[:, None], 0)
        latest = np.take_along_axis(latest, np.maximum.accumulate(idx, axis=0), axis=0)
        st.last_moved = latest[-1].copy()
        moved = latest[1:] == 1.0
        others: np.ndarray = (moved.sum(axis=1, keepdims=True) - moved) > 0
        return others

    def _before(self, layer: int, start: int, v: ChunkView) -> float | None:
        """The layer's last non-zero gradient norm before the stall began (same however the stream is chunked)."""
        col = v.grad[:, layer]
        rows = np.flatnonzero((v.steps < start) & np.isfinite(col) & (col > 0))
        value = col[rows[-1]] if len(rows) else self.st.last_grad[layer]
        return float(value) if np.isfinite(value) else None

    def _record(
        self, kind: str, confirmed: list[tuple[int, int]], ended: list[tuple[int, int, int]], v: ChunkView
    ) -> None:
        st = self.st
        for layer, start in confirmed:
            group = next((x for x in st.groups if x.kind == kind and x.start == start), None)
            if group is None:
                if len(st.groups) >= MAX_GROUPS:
                    st.dropped += 1
                    continue
                group = StallGroup(kind, start)
                st.groups.append(group)
            if len(group.layers) < MAX_LAYERS:
                group.layers.append(layer)
                group.before[str(layer)] = self._before(layer, start, v)
        for layer, start, last in ended:
            for group in st.groups:
                if group.kind == kind and group.start == start and layer in group.layers:
                    group.ended[str(layer)] = last

    def summary(self) -> dict[str, float | int | None]:
        """No run-level numbers of its own."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON state: O(L) run counters and the (bounded) groups."""
        return self.st.to_json()

    def findings(self, ctx: RunContext) -> list[Finding]:
        """One finding per group of layers that stalled at the same step: warning while stalled, info once resumed."""
        return [stall_finding(group, ctx, self.st.dropped) for group in self.st.groups]


def _unfreeze(layers: list[str], kind: str) -> Remediation:
    """Re-enable gradients (and updates) for the stalled layers' parameters, named as patterns."""
    patterns = [f"{name}.*" if name else "*" for name in layers]
    lines = "\n".join(
        f"for name, p in model.named_parameters():\n    if fnmatch.fnmatch(name, {pattern!r}):\n        p.requires_grad_(True)"
        for pattern in patterns[:4]
    )
    return Remediation(
        action="unfreeze",
        detail=f"If the freeze is a mistake, re-enable gradients for {span(layers)} and make sure their parameters "
        "are in an optimizer group with a non-zero lr"
        + (
            " (the gradient is there but the weights do not move: check the optimizer first)."
            if kind != "grad"
            else "."
        ),
        snippet="import fnmatch\n" + lines,
        references=[RUN_REFS["torch_freeze"]],
        params={"parameters": patterns},
    )


def _advice(start: int, layers: list[str], kind: str) -> list[Remediation]:
    return [
        _unfreeze(layers, kind),
        Remediation(
            action="check_freezing",
            detail="If the freeze is intentional (fine-tuning schedule), nothing to do. Otherwise look for code "
            f"that ran around step {start}: requires_grad_(False), a .detach() or torch.no_grad() on this "
            "branch, a parameter group whose lr went to 0, or the layer dropped from the optimizer.",
            snippet="print([(n, p.requires_grad) for n, p in model.named_parameters()])\n"
            "print([g['lr'] for g in optimizer.param_groups])",
            references=[RUN_REFS["torch_freeze"]],
            params={"step": start},
        ),
        Remediation(
            action="analyze_checkpoint",
            detail="If nothing froze it, run `gradhealth analyze` on a current checkpoint: a layer whose "
            "units are all dead (ReLU) or saturated also gets no gradient.",
        ),
    ]


def stall_finding(group: StallGroup, ctx: RunContext, dropped: int) -> Finding:
    """The finding for one group of stalled layers."""
    idx = sorted(group.layers)
    layers = [ctx.layers[i] for i in idx]
    resumed = all(str(i) in group.ended for i in idx)
    last = max(group.ended.values()) if resumed else ctx.last_step
    start = group.start
    verb = "gets" if len(layers) == 1 else "get"
    if group.kind == "grad":
        what = "no gradient (grad_norm exactly 0), after learning before"
    else:
        what = "a gradient, but its weights do not change (update_norm exactly 0) while other layers' do"
    message = f"From step {start}, {span(layers)} {verb} {what}."
    message += f" Learning resumed after step {last}." if resumed else f" Still stalled at step {ctx.last_step}."
    before = [b for b in group.before.values() if b is not None]
    return Finding(
        rule=RULE_ID,
        severity="info" if resumed else "warning",
        title=f"{'Layer' if len(layers) == 1 else f'{len(layers)} layers'} stalled from step {start}",
        message=message,
        layers=layers,
        step=start,
        last_step=last,
        evidence={
            "kind": "zero_gradient" if group.kind == "grad" else "no_update",
            "stalled_layers": len(layers),
            "grad_norm_before": float(np.median(before)) if before else None,
            "resumed": resumed,
            "groups_not_shown": dropped,
        },
        thresholds={
            "confirm_logged_steps": CONFIRM_N,
            "min_span_steps": MIN_SPAN,
            "active_steps_before": ACTIVE_MIN,
        },
        remediation=_advice(start, layers, group.kind),
        confidence=0.9 if group.kind == "grad" else 0.7,
    )
