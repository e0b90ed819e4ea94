"""Per-step layer statistics computed on the device with fused ops: no per-parameter host sync.

Per-parameter norms come from `torch._foreach_norm` (one fused kernel per dtype on CUDA), are stacked
into one vector and reduced to layers with index ops. Convention (docs/runs.md): NaN means "not
measured"; a measured value that is not finite is reported as +inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gradhealth.diagnostics.run_rules.metrics import METRICS
from torch import Tensor

from ._layers import Layer, main_device, sample_groups

INF = float("inf")
NAN = float("nan")


def _norms(tensors: list[Tensor], ord: float, device: torch.device) -> Tensor:
    """One float32 norm per tensor, as a vector on `device`; low precision is reduced in float32."""
    wide = [i for i, t in enumerate(tensors) if t.dtype == torch.float64]
    if not wide:
        parts = list(torch._foreach_norm(tensors, ord, dtype=torch.float32))
    else:
        narrow = [i for i in range(len(tensors)) if tensors[i].dtype != torch.float64]
        parts = [torch.empty(0)] * len(tensors)
        for i, n in zip(
            narrow, torch._foreach_norm([tensors[i] for i in narrow], ord, dtype=torch.float32), strict=True
        ):
            parts[i] = n
        for i, n in zip(wide, torch._foreach_norm([tensors[i] for i in wide], ord), strict=True):
            parts[i] = n.float()
    if any(p.device != device for p in parts):
        parts = [p.to(device) for p in parts]
    out = torch.stack(parts)
    if ord == 2.0 and out.is_cpu and bool(torch.isinf(out).any()):
        _redo_overflowed(tensors, out)
    return out


def _redo_overflowed(tensors: list[Tensor], norms: Tensor) -> None:
    """Redo in float64 the float32 norms that came out inf: a finite gradient above ~1.8e19 is not a non-finite one.

    CPU only, where asking costs no device sync; it runs only on a step that overflowed.
    """
    for i in torch.nonzero(torch.isinf(norms)).flatten().tolist():
        norms[i] = torch.linalg.vector_norm(tensors[i], dtype=torch.float64).float().to(norms.device)


def _max_abs(tensors: list[Tensor], device: torch.device) -> Tensor:
    """max |x| per tensor: one fused kernel on CUDA; on CPU aminmax, ~10x faster there than the inf-norm."""
    if device.type != "cpu" or not all(t.is_cpu for t in tensors):
        return _norms(tensors, INF, device)
    zero = torch.zeros((), dtype=torch.float32)
    lows, highs = [], []
    for t in tensors:
        low, high = torch.aminmax(t) if t.numel() else (zero, zero)
        lows.append(low if low.dtype == torch.float32 else low.float())
        highs.append(high if high.dtype == torch.float32 else high.float())
    return torch.maximum(torch.stack(highs), torch.stack(lows).neg_())


def _per_layer_l2(norms: Tensor, index: Tensor, size: int) -> Tensor:
    """Layer L2 norms from parameter L2 norms, summed in float64: float32 squares overflow from a norm of ~1.8e19."""
    if norms.device.type == "mps":  # no float64 there
        return _per_layer_l2_scaled(norms, index, size)
    wide = norms.double()
    out = torch.zeros(size, device=norms.device, dtype=torch.float64).index_add_(0, index, wide * wide).sqrt_()
    return torch.nan_to_num_(out.float(), nan=INF, posinf=INF)


def _per_layer_l2_scaled(norms: Tensor, index: Tensor, size: int) -> Tensor:
    """The same in float32, each layer's norms divided by its largest first (max-scaling), so no square overflows."""
    top = torch.zeros(size, device=norms.device, dtype=norms.dtype).scatter_reduce_(0, index, norms, "amax")
    scale = torch.where(top > 0, top, torch.ones_like(top))  # NaN and inf stay: their layer comes out +inf
    ratio = norms / scale[index]
    out = torch.zeros(size, device=norms.device, dtype=norms.dtype).index_add_(0, index, ratio * ratio)
    return torch.nan_to_num_(out.sqrt_().mul_(scale), nan=INF, posinf=INF)


def _index(values: list[int], device: torch.device) -> Tensor:
    """An index vector on `device`; non_blocking so CUDA does not sync the stream for it."""
    return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)


def _grad(p: Tensor) -> Tensor | None:
    grad = p.grad
    return grad.coalesce().values() if grad is not None and grad.is_sparse else grad


@dataclass
class Sample:
    """One sample group before the step: its grad max |g|, weight norms, and a weight copy to diff after it."""

    layer_ids: Tensor
    weights: list[Tensor]
    index: Tensor
    grad_max: Tensor
    norms: Tensor
    snapshot: list[Tensor] | None


@dataclass
class Pending:
    """What the pre-step hook measured, waiting for the post-step hook to finish the record."""

    grads: Tensor
    sample: Sample | None
    lr: Tensor | float | None
    sketch: Tensor | None = None  # (2, L, WIDTH) distributions, on a sketched step


class StatsEngine:
    """Turns the watched layers' grads and weights into one float32 vector per recorded step.

    Every recorded step reads each gradient once (its L2 norm: grad_norm, and nonfinite from it).
    The costlier metrics (grad_max_abs, weight_norm, update_norm) are measured for one sample group
    per step, in turn, so each layer gets them every `param_every` recorded steps.
    """

    def __init__(self, layers: list[Layer], param_every: int) -> None:
        self.num_layers = len(layers)
        self.device = main_device(layers)
        self._params = [p for layer in layers for p in layer.params]
        self._owner = [i for i, layer in enumerate(layers) for _ in layer.params]
        self._layout: tuple[bool, ...] | None = None
        self._grad_index = torch.zeros(0, dtype=torch.long, device=self.device)
        self._groups = []
        for group in sample_groups(layers, param_every):
            params = [p for i in group for p in layers[i].params]
            local = [k for k, i in enumerate(group) for _ in layers[i].params]
            self._groups.append((_index(group, self.device), params, local, _index(local, self.device)))
        self._present_index: dict[tuple[int, tuple[bool, ...]], Tensor] = {}

    @property
    def slots(self) -> int:
        """How many recorded steps one round of the sample groups takes (1 when nothing is sampled)."""
        return max(1, len(self._groups))

    def grads(self, grad_scale: Tensor | None = None) -> Tensor:
        """[grad_norm, nonfinite] per layer ([2, L]); a layer without grads reads 0 (measured, not missing)."""
        layout = tuple(p.grad is not None for p in self._params)
        if layout != self._layout:
            owners = [o for o, present in zip(self._owner, layout, strict=True) if present]
            self._grad_index = _index(owners, self.device)
            self._layout = layout
        out = torch.zeros(2, self.num_layers, device=self.device)
        grads = [g for g in map(_grad, self._params) if g is not None]
        if not grads:
            return out
        norms = _norms(grads, 2.0, self.device)  # a NaN/Inf element makes its tensor's norm non-finite
        out[0] = _per_layer_l2(norms, self._grad_index, self.num_layers)
        out[1].index_add_(0, self._grad_index, (~torch.isfinite(norms)).float())
        if grad_scale is not None:  # a fused optimizer unscales inside its kernel: the grads are still scaled
            out[0] /= grad_scale.to(out.device, torch.float32)
        return out

    def sample(self, recorded: int, snapshot: bool, grad_scale: Tensor | None = None) -> Sample | None:
        """This step's sample group: grad max |g| and weight norms, plus a weight copy when update_norm is wanted."""
        if not self._groups:
            return None
        slot = recorded % len(self._groups)
        layer_ids, params, local, index = self._groups[slot]
        if not params:
            return None
        grad_max = torch.zeros(len(layer_ids), device=self.device)
        grads = [_grad(p) for p in params]
        layout = tuple(g is not None for g in grads)
        if any(layout):
            key = (slot, layout)
            if key not in self._present_index:
                self._present_index[key] = _index([k for k, ok in zip(local, layout, strict=True) if ok], self.device)
            present = [g for g in grads if g is not None]
            grad_max.scatter_reduce_(0, self._present_index[key], _max_abs(present, self.device), "amax")
            torch.nan_to_num_(grad_max, nan=INF, posinf=INF)
            if grad_scale is not None:
                grad_max /= grad_scale.to(grad_max.device, torch.float32)
        weights = [p.detach() for p in params]
        norms = _per_layer_l2(_norms(weights, 2.0, self.device), index, len(layer_ids))
        copies = list(torch._foreach_mul(weights, 1.0)) if snapshot else None
        return Sample(layer_ids, weights, index, grad_max, norms, copies)

    def finish(self, pending: Pending) -> Tensor:
        """The record's vector: the METRICS rows of L values each (NaN = not measured), then a tensor lr."""
        out = torch.full((len(METRICS), self.num_layers), NAN, device=self.device)
        out[0], out[2] = pending.grads[0], pending.grads[1]
        sample = pending.sample
        if sample is not None:
            out[1].index_copy_(0, sample.layer_ids, sample.grad_max)
            out[3].index_copy_(0, sample.layer_ids, sample.norms)
            if sample.snapshot is not None:
                torch._foreach_sub_(sample.snapshot, sample.weights)
                updates = _per_layer_l2(_norms(sample.snapshot, 2.0, self.device), sample.index, len(sample.norms))
                out[4].index_copy_(0, sample.layer_ids, updates)
                sample.snapshot = None  # release the copy now, not when the record is shipped
        parts = [out.view(-1)]
        if isinstance(pending.lr, Tensor):
            parts.append(pending.lr.detach().to(self.device, torch.float32).reshape(1))
        return torch.cat(parts)
