"""The noise check: per-sample gradient moments from one backward, then noise_stats.

Linear and conv2d layers give their per-sample Gram matrices and moments from the one backward of
sum_i loss_i (noise_layers, Goodfellow's trick). Where such taps cover every parameter, the analysis
pass itself runs through the tapped graph and its backward serves (SharedPass): no pass of its own.
Otherwise the check runs one extra forward, and the other parameters' per-sample gradients are the
gradients of each entry of the per-sample loss vector: backward passes vmapped over rows of the
identity (autograd's is_grads_batched), in chunks;
where an op has no batching rule, one backward per sample on the same graph. Samples that interact
in the forward (BatchNorm in train mode) get the gradient of their own loss term, batch statistics
included. Parameters shared by several modules are one tensor, so their gradient sums every use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import is_out_of_memory
from .ggn_trace import LossNode, piecewise_linear_loss
from .loading import LoadedModel
from .noise_layers import LayerSamples, ParamSamples, Recording, Tap, tap_samples, tapped_module
from .noise_stats import NoiseMeasure, noise_statistics

CHECK = "noise"
MEMORY_BUDGET = 512 * 2**20  # bytes of per-sample gradients kept for the statistics
CHUNK_ELEMENTS = 64 * 2**20  # per-sample gradient elements one vmapped backward may produce
LayerGroup = tuple[str, list[str]]  # (layer name in the report, its parameter names)
Outcome = tuple[NoiseMeasure | None, list[tuple[str, str]]]


def _chunk_rows(loss_vec: Tensor, params: Sequence[Tensor], rows: range, batched: bool) -> tuple[list[Tensor], bool]:
    """Per-sample gradients [len(rows), *p.shape] per parameter; falls back to a loop once vmap fails."""
    n = loss_vec.shape[0]
    if batched:
        eye = torch.zeros(len(rows), n, dtype=loss_vec.dtype, device=loss_vec.device)
        eye[torch.arange(len(rows)), torch.tensor(list(rows))] = 1.0
        try:
            grads = torch.autograd.grad(
                loss_vec, params, grad_outputs=eye, is_grads_batched=True, retain_graph=True, allow_unused=True
            )
            return [_filled(g, p, len(rows)) for g, p in zip(grads, params, strict=True)], True
        except (RuntimeError, NotImplementedError) as exc:
            if is_out_of_memory(exc):
                raise
    per_row = []
    for i in rows:
        grads = torch.autograd.grad(loss_vec[i], params, retain_graph=True, allow_unused=True)
        per_row.append([_filled(g, p, None) for g, p in zip(grads, params, strict=True)])
    return [torch.stack(parts) for parts in zip(*per_row, strict=True)], False


def _filled(grad: Tensor | None, param: Tensor, rows: int | None) -> Tensor:
    """A parameter the loss never reaches has a zero gradient for every sample."""
    if grad is not None:
        return grad.detach().float()
    shape = param.shape if rows is None else (rows, *param.shape)
    return torch.zeros(shape, dtype=torch.float32, device=param.device)


def per_sample_gradients(
    loss_vec: Tensor, named: Mapping[str, Tensor], groups: Sequence[LayerGroup]
) -> dict[str, Tensor]:
    """Per-layer matrices [n, P_l] of per-sample gradients, concatenated in each group's order."""
    names = [name for _, members in groups for name in members]
    params = [named[name] for name in names]
    n = loss_vec.shape[0]
    chunk = max(1, CHUNK_ELEMENTS // max(1, sum(p.numel() for p in params)))
    pieces: dict[str, list[Tensor]] = {name: [] for name in names}
    batched = True
    for start in range(0, n, chunk):
        grads, batched = _chunk_rows(loss_vec, params, range(start, min(n, start + chunk)), batched)
        for name, g in zip(names, grads, strict=True):
            pieces[name].append(g.reshape(g.shape[0], -1).cpu())
    return {
        layer: torch.cat([torch.cat(pieces[name]) for name in members], dim=1) for layer, members in groups if members
    }


def _refusal(n: int, numel: int) -> str | None:
    """Why the check cannot run on this batch, or None; numel counts the per-sample gradients kept."""
    if n < 2:
        return "the batch has one sample: the gradient noise needs at least two (use a batch of 16 or more)"
    if n * numel * 4 > MEMORY_BUDGET:
        limit = max(2, MEMORY_BUDGET // (4 * numel))
        return (
            f"per-sample gradients of {n} samples x {numel} parameters exceed {MEMORY_BUDGET >> 20} MiB: "
            f"analyse a batch of at most {limit} samples for the noise check"
        )
    return None


def _kept_numel(taps: Sequence[Tap], named: Mapping[str, Tensor], names: Sequence[str]) -> int:
    """Parameters whose per-sample gradients are materialised: all but 2-D linear taps' (Gram form)."""
    factored = {t.weight for t in taps if t.kind == "linear"} | {t.bias for t in taps if t.kind == "linear"}
    return sum(named[name].numel() for name in names if name not in factored)


def _layer_samples(
    loaded: LoadedModel,
    inputs: tuple[Tensor, ...],
    targets: Tensor,
    named: Mapping[str, Tensor],
    kept: Sequence[LayerGroup],
    taps: Sequence[Tap],
) -> dict[str, LayerSamples] | None:
    """Tapped layers' moments from one backward, the rest by per-sample backward; None if the loss is constant."""
    module = loaded.module
    if taps and loaded.graph_module is not None:
        module, _ = tapped_module(loaded.graph_module, named)
    with Recording() as store:
        loss_vec = dataclasses.replace(loaded, module=module).per_sample_loss(inputs, targets).float()
    if not loss_vec.requires_grad:
        return None
    n = loss_vec.shape[0]
    # a tap whose input does not lead with the batch (flattened or batch-second tokens) goes the per-sample way
    taps = [t for t in taps if t.key not in store or store[t.key][0].shape[:1] == store[t.key][1].shape[:1] == (n,)]
    tapped = {name: tap for tap in taps for name in (tap.weight, tap.bias) if name is not None}
    rest = [(layer, [m for m in members if m not in tapped]) for layer, members in kept]
    rest = [(layer, members) for layer, members in rest if members]
    live = [tap for tap in taps if tap.key in store and store[tap.key][1].requires_grad]
    samples: dict[str, ParamSamples] = {}
    if live:
        outs = torch.autograd.grad(
            loss_vec.sum(), [store[t.key][1] for t in live], retain_graph=bool(rest), allow_unused=True
        )
        for tap, grad_out in zip(live, outs, strict=True):
            if grad_out is not None:
                samples.update(tap_samples(tap, store[tap.key][0], grad_out))
    for name in tapped:
        if name not in samples:  # a tap the loss never reaches: zero per-sample gradients
            samples[name] = ParamSamples.from_matrix(torch.zeros(n, named[name].numel()))
    if rest:
        for name, x in per_sample_gradients(loss_vec, named, [(m, [m]) for _, ms in rest for m in ms]).items():
            samples[name] = ParamSamples.from_matrix(x)
    return {layer: LayerSamples.combine([samples[m] for m in members]) for layer, members in kept}


def measure_noise(
    loaded: LoadedModel,
    inputs: tuple[Tensor, ...],
    targets: Tensor,
    groups: Sequence[LayerGroup],
    display: Callable[[str], str],
) -> Outcome:
    """Run the noise check; anything that stops it becomes a skipped entry, never a silent gap."""
    named = {name: p for name, p in loaded.module.named_parameters() if p.requires_grad}
    kept = [(display(path), [name for name in members if name in named]) for path, members in groups]
    kept = [(path, members) for path, members in kept if members]
    taps = [] if loaded.graph_module is None else tapped_module(loaded.graph_module, named)[1]
    names = [name for _, members in kept for name in members]
    refusal = _refusal(targets.shape[0], _kept_numel(taps, named, names))
    if refusal is not None or not kept:
        return None, [(CHECK, refusal or "no trainable parameter reaches the loss: there is no gradient noise")]
    try:
        per_layer = _layer_samples(loaded, inputs, targets, named, kept, taps)
        if per_layer is None:
            return None, [(CHECK, "the loss does not depend on any parameter: there is no gradient noise")]
    except (RuntimeError, NotImplementedError) as exc:
        if is_out_of_memory(exc):
            raise
        return None, [(CHECK, f"per-sample gradients failed: {type(exc).__name__}: {str(exc)[:300]}")]
    return _finish(per_layer)


def _finish(per_layer: Mapping[str, LayerSamples]) -> Outcome:
    """The statistics from every layer's moments, or why there are none."""
    finite = (bool(torch.isfinite(x.col_sq).all() and torch.isfinite(x.gram).all()) for x in per_layer.values())
    if not all(finite):
        return None, [(CHECK, "some per-sample gradients are NaN/Inf: fix non_finite first")]
    measure = noise_statistics(per_layer)
    if measure.grad_sq == 0 or not math.isfinite(measure.grad_sq):
        return None, [(CHECK, "the mean gradient is zero on this batch: there is no signal to compare noise with")]
    return measure, []


@dataclass
class SharedPass:
    """The analysis pass run through the tapped graph: the noise check needs no pass of its own, the trace may use it.

    Only where every trainable parameter belongs to a tap (linear/conv2d layers, no batch norm): the
    analysis pass's backward of the mean loss then gives each tap's output gradient, n times which is
    each sample's own (samples do not interact), and nothing needs a per-sample backward.
    """

    loaded: LoadedModel  # the model with the tapped graph as its module
    taps: list[Tap]
    kept: list[LayerGroup]
    named: Mapping[str, Tensor]
    loss: LossNode | None = None  # the cross-entropy node where tr(H) = tr(GGN) (ggn_trace.py)
    grads: dict[int, Tensor] = field(default_factory=dict)
    store: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def recording(self) -> Recording:
        """Wrap the analysis forward in this: it keeps the taps' inputs and, in the backward, their gradients."""
        return Recording(self.grads, self.store)


def shared_pass(loaded: LoadedModel, groups: Sequence[LayerGroup], display: Callable[[str], str]) -> SharedPass | None:
    """A SharedPass when the taps cover every parameter the noise check keeps; None: the check runs its own pass."""
    if loaded.graph_module is None:
        return None
    named = {name: p for name, p in loaded.module.named_parameters() if p.requires_grad}
    kept = [(display(path), [name for name in members if name in named]) for path, members in groups]
    kept = [(path, members) for path, members in kept if members]
    module, taps = tapped_module(loaded.graph_module, named)
    tapped = {name for tap in taps for name in (tap.weight, tap.bias) if name is not None}
    if not kept or not all(name in tapped for _, members in kept for name in members):
        return None
    loss = piecewise_linear_loss(loaded.graph_module, taps, list(named))
    return SharedPass(dataclasses.replace(loaded, module=module), taps, kept, named, loss)


def measure_shared(shared: SharedPass, n: int) -> Outcome | None:
    """The noise check from the analysis pass's recording; None when it cannot serve (the check then runs its own)."""
    store, grads = shared.store, shared.grads
    leading = all(store[t.key][0].shape[:1] == store[t.key][1].shape[:1] == (n,) for t in shared.taps if t.key in store)
    if (
        not leading
        or _refusal(n, _kept_numel(shared.taps, shared.named, [m for _, ms in shared.kept for m in ms])) is not None
    ):
        return None
    samples: dict[str, ParamSamples] = {}
    for tap in shared.taps:
        if tap.key in grads:  # the mean loss's output gradient: n times it is each sample's own
            samples.update(tap_samples(tap, store[tap.key][0], grads[tap.key] * n))
    for tap in shared.taps:
        for name in (tap.weight, tap.bias):
            if name is not None and name not in samples:  # a tap the loss never reaches: zero per-sample gradients
                samples[name] = ParamSamples.from_matrix(torch.zeros(n, shared.named[name].numel()))
    per_layer = {layer: LayerSamples.combine([samples[m] for m in members]) for layer, members in shared.kept}
    return _finish(per_layer)
