"""stalled_layer: a layer that had been learning stops getting gradients or updates (frozen mid-run)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..schema import Finding, Remediation
from .chunk import ChunkView
from .common import RUN_REFS, RunContext, span
from .rolling import MAX_EPISODES, ColumnRuns, dec_array, enc_array, last_positive

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
# Updates are sampled every ~10th step, so the same five samples span ~50 steps.
MAX_GROUPS = MAX_EPISODES
MAX_LAYERS = 50


class StalledLayerRule:
    """Per-layer runs of zero gradient (every step) and of no update (sampled steps); grouped by start step."""

    rule_id = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        st = state or {}
        self.L = num_layers
        self.grad_runs = ColumnRuns(num_layers, CONFIRM_N, MIN_SPAN, ACTIVE_MIN, st.get("grad_runs"))
        self.update_runs = ColumnRuns(num_layers, CONFIRM_N, MIN_SPAN, ACTIVE_MIN, st.get("update_runs"))
        # the last non-zero gradient norm of each layer, to quote what it had before the stall
        self.last_grad = dec_array(st["last_grad"]) if "last_grad" in st else np.full(num_layers, np.nan)
        self.groups: list[dict[str, Any]] = st.get("groups", [])  # {kind, start, layers, ended: {layer: last}}
        self.dropped = int(st.get("dropped", 0))

    def update(self, v: ChunkView) -> None:
        """Two vectorised ColumnRuns feeds per chunk."""
        g = v.grad
        confirmed, ended = self.grad_runs.feed(v.steps, g == 0, g > 0)  # NaN (not measured) is neither
        self._record("grad", confirmed, ended, v)
        rows, ratio = v.upd_rows, v.upd_ratio
        u = v.update[rows]
        sampled = ~np.isnan(ratio)
        lr_zero = np.isfinite(v.lr_filled[rows]) & (v.lr_filled[rows] <= 0)
        live = (sampled & (u > 0)).any(axis=1) & ~lr_zero  # the rest of the model is moving
        counted = sampled & live[:, None] & (g[rows] > 0)  # zero-gradient layers are the grad runs' case
        confirmed, ended = self.update_runs.feed(v.steps[rows], counted & (u == 0), counted & (u > 0))
        self._record("update", confirmed, ended, v)
        self.last_grad = last_positive(g, self.last_grad)

    def _before(self, layer: int, start: int, v: ChunkView) -> float | None:
        """The layer's last non-zero gradient norm before the stall began (same however the stream is chunked)."""
        col = v.grad[:, layer]
        rows = np.flatnonzero((v.steps < start) & np.isfinite(col) & (col > 0))
        value = col[rows[-1]] if len(rows) else self.last_grad[layer]
        return float(value) if np.isfinite(value) else None

    def _record(
        self, kind: str, confirmed: list[tuple[int, int]], ended: list[tuple[int, int, int]], v: ChunkView
    ) -> None:
        for layer, start in confirmed:
            group = next((x for x in self.groups if x["kind"] == kind and x["start"] == start), None)
            if group is None:
                if len(self.groups) >= MAX_GROUPS:
                    self.dropped += 1
                    continue
                group = {"kind": kind, "start": start, "layers": [], "ended": {}, "before": {}}
                self.groups.append(group)
            if len(group["layers"]) < MAX_LAYERS:
                group["layers"].append(layer)
                group["before"][str(layer)] = self._before(layer, start, v)
        for layer, start, last in ended:
            for group in self.groups:
                if group["kind"] == kind and group["start"] == start and layer in group["layers"]:
                    group["ended"][str(layer)] = last

    def state(self) -> dict[str, Any]:
        """JSON state: O(L) run counters and the (bounded) groups."""
        return {
            "grad_runs": self.grad_runs.state(),
            "update_runs": self.update_runs.state(),
            "last_grad": enc_array(self.last_grad),
            "groups": self.groups,
            "dropped": self.dropped,
        }

    def findings(self, ctx: RunContext) -> list[Finding]:
        """One finding per group of layers that stalled at the same step: warning while stalled, info once resumed."""
        return [self._finding(group, ctx) for group in self.groups]

    def _finding(self, group: dict[str, Any], ctx: RunContext) -> Finding:
        idx = sorted(group["layers"])
        layers = [ctx.layers[i] for i in idx]
        resumed = all(str(i) in group["ended"] for i in idx)
        last = max(group["ended"].values()) if resumed else ctx.last_step
        start = group["start"]
        if group["kind"] == "grad":
            what = "no gradient (grad_norm exactly 0)"
        else:
            what = "a gradient, but its weights no longer change (update_norm exactly 0)"
        verb = "gets" if len(layers) == 1 else "get"
        message = f"From step {start}, {span(layers)} {verb} {what}, after learning before."
        message += f" Learning resumed after step {last}." if resumed else f" Still stalled at step {ctx.last_step}."
        before = [b for b in group["before"].values() if b is not None]
        return Finding(
            rule=RULE_ID,
            severity="info" if resumed else "warning",
            title=f"{'Layer' if len(layers) == 1 else f'{len(layers)} layers'} stalled from step {start}",
            message=message,
            layers=layers,
            step=start,
            last_step=last,
            evidence={
                "kind": "zero_gradient" if group["kind"] == "grad" else "no_update",
                "stalled_layers": len(layers),
                "grad_norm_before": float(np.median(before)) if before else None,
                "resumed": resumed,
                "groups_not_shown": self.dropped,
            },
            thresholds={
                "confirm_logged_steps": CONFIRM_N,
                "min_span_steps": MIN_SPAN,
                "active_steps_before": ACTIVE_MIN,
            },
            remediation=[
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
            ],
            confidence=0.9 if group["kind"] == "grad" else 0.7,
        )
