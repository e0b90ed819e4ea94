"""non_finite: the first step and layer where gradients, weights or the loss stop being finite."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..schema import Finding, Remediation
from .chunk import ChunkView
from .common import REFS, RunContext, clip_remediation, fmt, label, lower_lr_remediation, span
from .rolling import MAX_EPISODES, dec, enc

RULE_ID = "non_finite"

# One clean step (finite gradients and loss) ends an incident. Under AMP, GradScaler skips a step
# whose gradients overflowed and halves the scale, so the next step is normally clean again
# (Micikevicius et al. 2018): such recovered gradient-only incidents are a warning, not a crash.
RECOVER_STEPS = 1
MAX_LAYERS = 20
# A global gradient norm 100x its 90th percentile just before the first NaN means the run blew up
# (overflow at the end of a divergence), not that one op misbehaved on ordinary values.
EXPLODED = 100.0


class NonFiniteRule:
    """Track incidents of NaN/Inf: ongoing ones are critical, recovered gradient overflows a warning."""

    rule_id = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.L = num_layers
        self.s: dict[str, Any] = state or {
            "open": None,
            "closed": [],
            "transient": None,
            "clean_n": 0,
            "last_norm": None,
            "bad_steps": 0,
        }

    def update(self, v: ChunkView) -> None:
        """Scan the chunk's rows; only rows that are bad, or clean while an incident is open, cost Python work."""
        loss_bad = v.loss_logged & ~np.isfinite(v.loss)
        # cheap row flags first (global_norm is inf when any layer norm is inf or counts non-finite tensors)
        row_bad = np.isinf(v.global_norm) | np.isinf(v.grad_max).any(axis=1) | loss_bad
        sampled = np.zeros(v.n, dtype=bool)
        sampled[v.upd_rows] = True
        row_bad[sampled] |= (np.isinf(v.weight[sampled]) | np.isinf(v.update[sampled])).any(axis=1)
        finite_norm = np.isfinite(v.global_norm)
        row_clean = ~row_bad & (finite_norm | (v.loss_logged & np.isfinite(v.loss)))
        s = self.s
        last_finite = np.flatnonzero(finite_norm)
        interesting = np.flatnonzero(row_bad | (row_clean & (s["open"] is not None or row_bad.any())))
        for i in interesting.tolist():
            step = int(v.steps[i])
            if row_bad[i]:
                s["bad_steps"] += 1
                s["clean_n"] = 0
                grad_bad = (v.nonfinite[i] > 0) | np.isinf(v.grad[i]) | np.isinf(v.grad_max[i])
                weight_bad = np.isinf(v.weight[i]) | np.isinf(v.update[i])
                if s["open"] is None:
                    before = last_finite[last_finite < i]
                    prev_norm = float(v.global_norm[before[-1]]) if len(before) else s["last_norm"]
                    s["open"] = self._incident(step, grad_bad, weight_bad, v.loss[i], bool(loss_bad[i]), prev_norm)
                ep = s["open"]
                ep["last"] = step
                ep["bad_n"] += 1
                ep["loss_bad"] = ep["loss_bad"] or bool(loss_bad[i])
                ep["weights_bad"] = ep["weights_bad"] or bool(weight_bad.any())
            elif s["open"] is not None:
                s["clean_n"] += 1
                if s["clean_n"] >= RECOVER_STEPS:
                    self._close(step)
        if len(last_finite):
            s["last_norm"] = float(v.global_norm[last_finite[-1]])

    def _incident(
        self, step: int, grad_bad: np.ndarray, weight_bad: np.ndarray, loss: float, loss_bad: bool, prev: float | None
    ) -> dict[str, Any]:
        """Open an incident; layers are ordered probable origin first."""
        wl = np.flatnonzero(weight_bad).tolist()
        gl = np.flatnonzero(grad_bad).tolist()
        hit = sorted(set(wl) | set(gl))
        if len(hit) == self.L and self.L > 1:  # all at once: no origin to point at, registration order
            order = hit
        elif wl:  # weights that are already NaN/Inf poison everything downstream: they come first
            order = wl + [i for i in gl if i not in wl]
        elif gl:  # backward runs output -> input: the hit layer nearest the output is where it began
            order = [gl[-1]] + gl[:-1]
        else:
            order = []
        return {
            "start": step,
            "last": step,
            "bad_n": 0,
            "layers": order[:MAX_LAYERS],
            "layers_hit": len(hit),
            "all_layers": len(hit) == self.L and self.L > 1,
            "loss_at_start": enc(loss) if loss_bad or np.isfinite(loss) else None,
            "loss_bad": loss_bad,
            "weights_bad": bool(wl),
            "first_kinds": [
                k for k, bad in (("gradients", bool(gl)), ("weights", bool(wl)), ("loss", loss_bad)) if bad
            ],
            "prev_norm": enc(prev) if prev is not None else None,
            "recovered_at": None,
        }

    def _close(self, step: int) -> None:
        s = self.s
        ep, s["open"], s["clean_n"] = s["open"], None, 0
        ep["recovered_at"] = step
        if not ep["loss_bad"] and not ep["weights_bad"]:
            t = s["transient"]
            if t is None:
                s["transient"] = {**ep, "episodes": 1}
            else:
                t["last"] = ep["last"]
                t["bad_n"] += ep["bad_n"]
                t["episodes"] += 1
            return
        if len(s["closed"]) < MAX_EPISODES:
            s["closed"].append(ep)
        else:
            last = s["closed"][-1]
            last["last"], last["bad_n"] = ep["last"], last["bad_n"] + ep["bad_n"]
            last["merged"] = last.get("merged", 0) + 1

    def state(self) -> dict[str, Any]:
        """JSON state."""
        return self.s

    def findings(self, ctx: RunContext) -> list[Finding]:
        """Ongoing incident: critical; recovered with a non-finite loss/weights: error; recovered overflows: warning."""
        s = self.s
        out = [self._finding(ep, "error", ctx) for ep in s["closed"]]
        if s["transient"] is not None:
            out.append(self._finding(s["transient"], "warning", ctx))
        if s["open"] is not None:
            out.append(self._finding(s["open"], "critical", ctx))
        return out

    def _finding(self, ep: dict[str, Any], severity: str, ctx: RunContext) -> Finding:
        layers = [ctx.layers[i] for i in ep["layers"]]
        start, last = ep["start"], ep["last"]
        kinds = {"gradients": ep["layers_hit"] > 0, "weights": ep["weights_bad"], "loss": ep["loss_bad"]}
        first = ep["first_kinds"]
        later = [k for k, bad in kinds.items() if bad and k not in first]
        kind = " and ".join(first)
        then = f", then the {' and '.join(later)} too" if later else ""
        prev = dec(ep["prev_norm"]) if ep["prev_norm"] is not None else None
        where = (
            "every layer at once"
            if ep["all_layers"]
            else (f"{label(layers[0])} first" + (f", then {span(layers[1:])}" if len(layers) > 1 else ""))
            if layers
            else "no layer: the loss itself"
        )
        if severity == "critical":
            title = f"NaN/Inf since step {start}"
            message = (
                f"At step {start} the {kind} became non-finite ({where}){then}; {ep['bad_n']} bad step(s) up to "
                f"step {last} and no clean step since."
            )
        elif severity == "error":
            title = f"NaN/Inf at step {start}" if last == start else f"NaN/Inf at steps {start}–{last}"
            message = (
                f"At step {start} the {kind} became non-finite ({where}){then}; the run was clean again at step "
                f"{ep['recovered_at']}."
            )
        else:
            title = "Isolated gradient overflows"
            message = (
                f"{ep['bad_n']} step(s) in {ep.get('episodes', 1)} episode(s) between steps {start} and {last} had NaN/Inf "
                f"gradients ({where}) with a finite loss, and each time the next step was clean: "
                "the optimizer step was most likely skipped (AMP GradScaler does this on overflow)."
            )
        if self._exploded(prev, ctx):
            message += (
                f" Just before, the global gradient norm had grown to {fmt(prev)} ({fmt(prev / ctx.max_norm)}x its 90th "
                "percentile): the overflow ends a divergence rather than pointing at one op."
            )
        elif prev is not None:
            message += f" The global gradient norm before it was {fmt(prev)}."
        evidence: dict[str, Any] = {
            "first_step": start,
            "last_bad_step": last,
            "bad_steps": ep["bad_n"],
            "layers_hit": ep["layers_hit"],
            "all_layers": ep["all_layers"],
            "loss_nonfinite": ep["loss_bad"],
            "weights_nonfinite": ep["weights_bad"],
            "first_nonfinite": first,
            "loss_at_first_step": ep["loss_at_start"],
            "global_grad_norm_before": prev,
        }
        if "episodes" in ep:
            evidence["episodes"] = ep["episodes"]
        return Finding(
            rule=RULE_ID,
            severity=severity,  # type: ignore[arg-type]
            title=title,
            message=message,
            layers=layers,
            step=start,
            last_step=ctx.last_step if severity == "critical" else last,
            evidence=evidence,
            thresholds={"nonfinite_elements": 0, "recover_clean_steps": RECOVER_STEPS},
            remediation=self._advice(ep, severity, ctx),
            confidence=0.95 if severity != "warning" else 0.7,
        )

    @staticmethod
    def _exploded(prev: float | None, ctx: RunContext) -> bool:
        return prev is not None and ctx.max_norm is not None and prev > EXPLODED * ctx.max_norm

    def _advice(self, ep: dict[str, Any], severity: str, ctx: RunContext) -> list[Remediation]:
        start = ep["start"]
        prev = dec(ep["prev_norm"]) if ep["prev_norm"] is not None else None
        lower = lower_lr_remediation(ctx.last_lr, 3, "a step that overflows often follows a too-large one.")
        analyze = Remediation(
            action="analyze_checkpoint",
            detail=f"The stream shows where, not which op. Save the model and the batch of step {start} from a checkpoint "
            f"just before it and run `gradhealth analyze` on them: the checkpoint analysis names the first op that "
            "produces NaN/Inf (forward or backward).",
            snippet=f"gradhealth.package(model, loss_fn, inputs, targets, 'step{start}.pt2')\n"
            f"gradhealth.save_batch('step{start}.safetensors', inputs, targets)\n"
            f"# then: gradhealth analyze --model step{start}.pt2 --batch step{start}.safetensors",
            params={"step": start},
        )
        if severity == "warning":
            return [
                Remediation(
                    action="check_loss_scaling",
                    detail="With torch.amp GradScaler, occasional skipped steps are expected. If they are frequent, "
                    "start from a lower scale or train in bf16; without a scaler, guard the step (skip it when "
                    "the gradients are not finite) and find the op.",
                    snippet="scaler = torch.amp.GradScaler('cuda', init_scale=2.0**12)",
                    references=[REFS["micikevicius2018"]],
                    params={"init_scale": 4096.0},
                ),
                analyze,
            ]
        exploded = self._exploded(prev, ctx)
        advice = [lower, clip_remediation(ctx)] if exploded else []
        if not exploded and (ep["all_layers"] or not ep["layers"]):
            advice.append(analyze)
            if "loss" in ep["first_kinds"]:
                advice.append(
                    Remediation(
                        action="check_batch",
                        detail=f"The loss itself was NaN/Inf at step {start} with finite weights before: look at that "
                        "step's batch (NaN/Inf inputs, empty or out-of-range targets) and the loss function "
                        "(log of 0, division by a zero count).",
                        snippet="assert torch.isfinite(inputs).all() and torch.isfinite(targets).all(), step",
                        params={"step": start},
                    )
                )
        if ep["weights_bad"]:
            advice.append(
                Remediation(
                    action="restore_checkpoint",
                    detail=f"The weights themselves are NaN/Inf: training cannot recover. Restore the last checkpoint "
                    f"before step {start} and lower the learning rate or clip gradients before resuming.",
                    references=[REFS["pascanu2013"]],
                    params={"step": start},
                )
            )
        if exploded:
            return advice
        if not ep["all_layers"] and ep["layers"]:
            layer = ctx.layers[ep["layers"][0]]
            advice.append(
                Remediation(
                    action="guard_op",
                    detail=f"The first NaN/Inf gradient is in {label(layer)}: look there for log/sqrt/div/pow of values "
                    "at 0 or negative, and exp overflow; clamp the input or add an epsilon.",
                    snippet="y = torch.log(x.clamp_min(1e-12))  # or torch.sqrt(x + 1e-12), x / (d + 1e-12)",
                    params={"layer": layer},
                )
            )
            advice.append(analyze)
        return advice + [clip_remediation(ctx), lower]
