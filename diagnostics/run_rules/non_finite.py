"""non_finite: the first step and layer where gradients, weights or the loss stop being finite."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np
from gradhealth.report import Finding, Remediation, Severity

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


@dataclass
class Incident:
    """A stretch of non-finite steps, from its first bad step until a clean one."""

    start: int
    last: int  # the last bad step
    bad_n: int  # bad steps in it
    layers: list[int]  # hit layers, probable origin first (at most MAX_LAYERS)
    layers_hit: int
    all_layers: bool  # every layer at once (and more than one): no origin to point at
    loss_at_start: float | str | None  # enc()-encoded
    loss_bad: bool
    weights_bad: bool
    first_kinds: list[str]  # what was non-finite at the first step: gradients, weights, loss
    prev_norm: float | str | None  # enc()-encoded global norm before it
    recovered_at: int | None = None
    episodes: int | None = None  # recovered gradient-only incidents merged into one (the transient one)
    merged: int = 0  # later incidents folded into this one (MAX_EPISODES)

    def to_json(self) -> dict[str, Any]:
        """JSON object (the keys of state version 1; episodes/merged only when set)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("episodes", "merged")}
        if self.episodes is not None:
            out["episodes"] = self.episodes
        if self.merged:
            out["merged"] = self.merged
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Incident:
        """Read what to_json() wrote."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def previous_norm(self) -> float | None:
        """The global gradient norm logged just before the incident."""
        return dec(self.prev_norm) if self.prev_norm is not None else None


@dataclass
class NonFiniteState:
    """The open incident, the recovered ones, and the counters between them."""

    open: Incident | None = None
    closed: list[Incident] = field(default_factory=list)  # recovered incidents with a bad loss or weights
    transient: Incident | None = None  # recovered gradient-only incidents, merged
    clean_n: int = 0  # clean steps since the last bad one
    last_norm: float | None = None  # the last finite global norm
    bad_steps: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON object."""
        return {
            "open": self.open.to_json() if self.open is not None else None,
            "closed": [ep.to_json() for ep in self.closed],
            "transient": self.transient.to_json() if self.transient is not None else None,
            "clean_n": self.clean_n,
            "last_norm": self.last_norm,
            "bad_steps": self.bad_steps,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> NonFiniteState:
        """Read what to_json() wrote (None: a fresh state)."""
        if not d:
            return cls()

        def incident(x: dict[str, Any] | None) -> Incident | None:
            return Incident.from_json(x) if x is not None else None

        closed = [Incident.from_json(ep) for ep in d.get("closed", [])]
        return cls(
            incident(d.get("open")),
            closed,
            incident(d.get("transient")),
            int(d.get("clean_n", 0)),
            d.get("last_norm"),
            int(d.get("bad_steps", 0)),
        )


def row_flags(v: ChunkView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the loss is non-finite, anything is non-finite (bad), and clean (something finite, nothing bad)."""
    loss_bad = v.loss_logged & ~np.isfinite(v.loss)
    # cheap row flags first (global_norm is inf when any layer norm is inf or counts non-finite tensors)
    row_bad = np.isinf(v.global_norm) | np.isinf(v.grad_max).any(axis=1) | loss_bad
    sampled = np.zeros(v.n, dtype=bool)
    sampled[v.upd_rows] = True
    row_bad[sampled] |= (np.isinf(v.weight[sampled]) | np.isinf(v.update[sampled])).any(axis=1)
    row_clean = ~row_bad & (np.isfinite(v.global_norm) | (v.loss_logged & np.isfinite(v.loss)))
    return loss_bad, row_bad, row_clean


class NonFiniteRule:
    """Track incidents of NaN/Inf: ongoing ones are critical, recovered gradient overflows a warning."""

    rule_id: ClassVar[str] = RULE_ID

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.L = num_layers
        self.st = NonFiniteState.from_json(state)

    def update(self, v: ChunkView) -> None:
        """Scan the chunk's rows; only rows that are bad, or clean while an incident is open, cost Python work."""
        loss_bad, row_bad, row_clean = row_flags(v)
        st = self.st
        last_finite = np.flatnonzero(np.isfinite(v.global_norm))
        interesting = np.flatnonzero(row_bad | (row_clean & (st.open is not None or row_bad.any())))
        for i in interesting.tolist():
            step = int(v.steps[i])
            if row_bad[i]:
                self._bad_row(v, i, bool(loss_bad[i]), last_finite)
            elif st.open is not None:
                st.clean_n += 1
                if st.clean_n >= RECOVER_STEPS:
                    self._close(step)
        if len(last_finite):
            st.last_norm = float(v.global_norm[last_finite[-1]])

    def _bad_row(self, v: ChunkView, i: int, loss_bad: bool, last_finite: np.ndarray) -> None:
        """Count a bad row: open an incident or extend the open one."""
        st = self.st
        step = int(v.steps[i])
        st.bad_steps += 1
        st.clean_n = 0
        grad_bad = (v.nonfinite[i] > 0) | np.isinf(v.grad[i]) | np.isinf(v.grad_max[i])
        weight_bad = np.isinf(v.weight[i]) | np.isinf(v.update[i])
        if st.open is None:
            before = last_finite[last_finite < i]
            prev_norm = float(v.global_norm[before[-1]]) if len(before) else st.last_norm
            st.open = self._incident(step, grad_bad, weight_bad, v.loss[i], loss_bad, prev_norm)
        ep = st.open
        ep.last = step
        ep.bad_n += 1
        ep.loss_bad = ep.loss_bad or loss_bad
        ep.weights_bad = ep.weights_bad or bool(weight_bad.any())

    def _incident(
        self, step: int, grad_bad: np.ndarray, weight_bad: np.ndarray, loss: float, loss_bad: bool, prev: float | None
    ) -> Incident:
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
        kinds = (("gradients", bool(gl)), ("weights", bool(wl)), ("loss", loss_bad))
        return Incident(
            start=step,
            last=step,
            bad_n=0,
            layers=order[:MAX_LAYERS],
            layers_hit=len(hit),
            all_layers=len(hit) == self.L and self.L > 1,
            loss_at_start=enc(loss) if loss_bad or np.isfinite(loss) else None,
            loss_bad=loss_bad,
            weights_bad=bool(wl),
            first_kinds=[k for k, bad in kinds if bad],
            prev_norm=enc(prev) if prev is not None else None,
        )

    def _close(self, step: int) -> None:
        st = self.st
        ep, st.open, st.clean_n = st.open, None, 0
        assert ep is not None
        ep.recovered_at = step
        if not ep.loss_bad and not ep.weights_bad:
            t = st.transient
            if t is None:
                st.transient = replace(ep, episodes=1)
            else:
                t.last = ep.last
                t.bad_n += ep.bad_n
                t.episodes = (t.episodes or 1) + 1
            return
        if len(st.closed) < MAX_EPISODES:
            st.closed.append(ep)
        else:
            last = st.closed[-1]
            last.last, last.bad_n = ep.last, last.bad_n + ep.bad_n
            last.merged += 1

    def summary(self) -> dict[str, float | int | None]:
        """The run-level number this rule keeps: how many steps had NaN/Inf."""
        return {"nonfinite_steps": self.st.bad_steps}

    def state(self) -> dict[str, Any]:
        """JSON state."""
        return self.st.to_json()

    def findings(self, ctx: RunContext) -> list[Finding]:
        """Ongoing incident: critical; recovered with a non-finite loss/weights: error; recovered overflows: warning."""
        st = self.st
        out = [incident_finding(ep, "error", ctx) for ep in st.closed]
        if st.transient is not None:
            out.append(incident_finding(st.transient, "warning", ctx))
        if st.open is not None:
            out.append(incident_finding(st.open, "critical", ctx))
        return out


def exploded(prev: float | None, ctx: RunContext) -> bool:
    """The global norm before the incident was far above its 90th percentile: the end of a divergence."""
    return prev is not None and ctx.max_norm is not None and prev > EXPLODED * ctx.max_norm


def _where(ep: Incident, layers: list[str]) -> str:
    if ep.all_layers:
        return "every layer at once"
    if layers:
        return f"{label(layers[0])} first" + (f", then {span(layers[1:])}" if len(layers) > 1 else "")
    return "no layer: the loss itself"


def _title_message(ep: Incident, severity: Severity, layers: list[str]) -> tuple[str, str]:
    start, last = ep.start, ep.last
    kinds = {"gradients": ep.layers_hit > 0, "weights": ep.weights_bad, "loss": ep.loss_bad}
    later = [k for k, bad in kinds.items() if bad and k not in ep.first_kinds]
    kind = " and ".join(ep.first_kinds)
    then = f", then the {' and '.join(later)} too" if later else ""
    where = _where(ep, layers)
    if severity == "critical":
        return f"NaN/Inf since step {start}", (
            f"At step {start} the {kind} became non-finite ({where}){then}; {ep.bad_n} bad step(s) up to "
            f"step {last} and no clean step since."
        )
    if severity == "error":
        title = f"NaN/Inf at step {start}" if last == start else f"NaN/Inf at steps {start}–{last}"
        return title, (
            f"At step {start} the {kind} became non-finite ({where}){then}; the run was clean again at step "
            f"{ep.recovered_at}."
        )
    return "Isolated gradient overflows", (
        f"{ep.bad_n} step(s) in {ep.episodes or 1} episode(s) between steps {start} and {last} had NaN/Inf "
        f"gradients ({where}) with a finite loss, and each time the next step was clean: "
        "the optimizer step was most likely skipped (AMP GradScaler does this on overflow)."
    )


def _norm_note(prev: float | None, ctx: RunContext) -> str:
    if exploded(prev, ctx):
        assert prev is not None and ctx.max_norm is not None
        return (
            f" Just before, the global gradient norm had grown to {fmt(prev)} ({fmt(prev / ctx.max_norm)}x "
            f"{'the 90th percentile of the norms before it first spiked' if ctx.calm_clip else 'its 90th percentile'}"
            "): the overflow ends a divergence rather than pointing at one op."
        )
    return f" The global gradient norm before it was {fmt(prev)}." if prev is not None else ""


def _evidence(ep: Incident, prev: float | None) -> dict[str, Any]:
    evidence: dict[str, Any] = {
        "first_step": ep.start,
        "last_bad_step": ep.last,
        "bad_steps": ep.bad_n,
        "layers_hit": ep.layers_hit,
        "all_layers": ep.all_layers,
        "loss_nonfinite": ep.loss_bad,
        "weights_nonfinite": ep.weights_bad,
        "first_nonfinite": ep.first_kinds,
        "loss_at_first_step": ep.loss_at_start,
        "global_grad_norm_before": prev,
    }
    if ep.episodes is not None:
        evidence["episodes"] = ep.episodes
    return evidence


def incident_finding(ep: Incident, severity: Severity, ctx: RunContext) -> Finding:
    """The finding for one incident at the given severity."""
    layers = [ctx.layers[i] for i in ep.layers]
    prev = ep.previous_norm()
    title, message = _title_message(ep, severity, layers)
    return Finding(
        rule=RULE_ID,
        severity=severity,
        title=title,
        message=message + _norm_note(prev, ctx),
        layers=layers,
        step=ep.start,
        last_step=ctx.last_step if severity == "critical" else ep.last,
        evidence=_evidence(ep, prev),
        thresholds={"nonfinite_elements": 0, "recover_clean_steps": RECOVER_STEPS},
        remediation=_advice(ep, severity, ctx),
        confidence=0.95 if severity != "warning" else 0.7,
    )


def _analyze(start: int) -> Remediation:
    return Remediation(
        action="analyze_checkpoint",
        detail=f"The stream shows where, not which op. Save the model and the batch of step {start} from a checkpoint "
        f"just before it and run `gradhealth analyze` on them: the checkpoint analysis names the first op that "
        "produces NaN/Inf (forward or backward).",
        snippet=f"gradhealth.package(model, loss_fn, inputs, targets, 'step{start}.pt2')\n"
        f"gradhealth.save_batch('step{start}.safetensors', inputs, targets)\n"
        f"# then: gradhealth analyze --model step{start}.pt2 --batch step{start}.safetensors",
        params={"step": start},
    )


def _loss_scaling() -> Remediation:
    return Remediation(
        action="check_loss_scaling",
        detail="With torch.amp GradScaler, occasional skipped steps are expected. If they are frequent, "
        "start from a lower scale or train in bf16; without a scaler, guard the step (skip it when "
        "the gradients are not finite) and find the op.",
        snippet="scaler = torch.amp.GradScaler('cuda', init_scale=2.0**12)",
        references=[REFS["micikevicius2018"]],
        params={"init_scale": 4096.0},
    )


def _check_batch(start: int) -> Remediation:
    return Remediation(
        action="check_batch",
        detail=f"The loss itself was NaN/Inf at step {start} with finite weights before: look at that "
        "step's batch (NaN/Inf inputs, empty or out-of-range targets) and the loss function "
        "(log of 0, division by a zero count).",
        snippet="assert torch.isfinite(inputs).all() and torch.isfinite(targets).all(), step",
        params={"step": start},
    )


def _restore(start: int) -> Remediation:
    return Remediation(
        action="restore_checkpoint",
        detail=f"The weights themselves are NaN/Inf: training cannot recover. Restore the last checkpoint "
        f"before step {start} and lower the learning rate or clip gradients before resuming.",
        references=[REFS["pascanu2013"]],
        params={"step": start},
    )


def _analyze_layer(start: int, layer: str) -> Remediation:
    """The stream shows the layer, not the op: the checkpoint analysis names the op (guard_op only follows that)."""
    advice = _analyze(start)
    advice.detail = (
        f"The first NaN/Inf gradient is in {label(layer)}, with no blow-up before it. The stream shows where, not "
        f"which op: save the model and the batch of step {start} and run `gradhealth analyze` on them; it names "
        "the op, and says whether a log/sqrt/div needs a guard."
    )
    advice.params = {"step": start, "layer": layer}
    return advice


def _advice(ep: Incident, severity: Severity, ctx: RunContext) -> list[Remediation]:
    start = ep.start
    lower = lower_lr_remediation(ctx.last_lr, 3, "a step that overflows often follows a too-large one.")
    if severity == "warning":
        return [_loss_scaling(), _analyze(start)]
    blew_up = exploded(ep.previous_norm(), ctx)
    advice = [lower, clip_remediation(ctx)] if blew_up else []
    if not blew_up and (ep.all_layers or not ep.layers):
        advice.append(_analyze(start))
        if "loss" in ep.first_kinds:
            advice.append(_check_batch(start))
    if ep.weights_bad:
        advice.append(_restore(start))
    if blew_up:
        return advice
    if not ep.all_layers and ep.layers:
        advice.append(_analyze_layer(start, ctx.layers[ep.layers[0]]))
    return advice + [clip_remediation(ctx), lower]
