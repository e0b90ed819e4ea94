"""Per-layer parameter statistics after one backward pass, with fused per-list ops."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .options import OptimizerSpec

# fp16's smallest subnormal is 2^-24: smaller magnitudes flush to zero; below its smallest
# normal, 2^-14, precision is lost (Micikevicius et al. 2018, "Mixed Precision Training").
FP16_MIN_SUBNORMAL = 2.0**-24
FP16_MIN_NORMAL = 2.0**-14
# GradScaler's default initial loss scale (torch.amp.GradScaler init_scale=2**16).
DEFAULT_LOSS_SCALE = 2.0**16


@dataclass
class ParamLayerStats:
    """Sums over one layer's parameters, before ratios are taken."""

    numel: int
    grad_sq: float | None
    weight_sq: float
    update_sq: float | None
    nonfinite: int
    flushed: int
    flushed_scaled: int
    subnormal: int
    nonzero_grads: int
    missing_grads: int


def sgd_first_update(param: Tensor, grad: Tensor, opt: OptimizerSpec) -> Tensor:
    """SGD's first step: lr * (g + wd * w); momentum's buffer starts at g."""
    return opt.lr * (grad + opt.weight_decay * param) if opt.weight_decay else opt.lr * grad


def adam_first_update(param: Tensor, grad: Tensor, opt: OptimizerSpec) -> Tensor:
    """Adam's bias-corrected first step is lr * g / (|g| + eps); AdamW adds lr * wd * w."""
    g = grad + opt.weight_decay * param if opt.name == "adam" and opt.weight_decay else grad
    update = opt.lr * g / (g.abs() + opt.eps)
    if opt.name == "adamw" and opt.weight_decay:
        update = update + opt.lr * opt.weight_decay * param
    return update


def first_update(param: Tensor, grad: Tensor, opt: OptimizerSpec) -> Tensor:
    """The parameter change the declared optimizer's first step would make."""
    return sgd_first_update(param, grad, opt) if opt.name == "sgd" else adam_first_update(param, grad, opt)


# The fp16 fractions are estimated on a strided sample of at most 2^14 elements per parameter:
# binomial standard error <= 0.4%, far below the 1-5% thresholds, and the pass touches a fraction
# of the memory (a full pass over every gradient would cost more than the 1.5x budget allows).
FP16_SAMPLE = 1 << 14


SAMPLE_BLOCK = 256


def _sample(flat: Tensor) -> Tensor:
    """FP16_SAMPLE elements in evenly spaced contiguous blocks (cache-friendly); all of a small tensor."""
    if flat.numel() <= FP16_SAMPLE or not flat.is_contiguous():
        return flat if flat.numel() <= FP16_SAMPLE else flat[:: flat.numel() // FP16_SAMPLE][:FP16_SAMPLE]
    blocks = FP16_SAMPLE // SAMPLE_BLOCK
    return flat.as_strided((blocks, SAMPLE_BLOCK), (flat.numel() // blocks, 1)).reshape(-1)


@functools.lru_cache(maxsize=8)
def _segment_ids(lengths: tuple[int, ...], device: torch.device) -> Tensor:
    """Parameter index of every sampled element; the same model gives the same layout every time."""
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))


def _fp16_counts(grads: list[Tensor]) -> Tensor:
    """Per parameter [sample size, flushed, flushed even with a 2^16 scale, subnormal, nonzero].

    All samples are bucketed at once: bucket 0 is exact zero, 1 is (0, 2^-40), 2 is [2^-40, 2^-24),
    3 is [2^-24, 2^-14) and 4 is the normal range, so a handful of kernels serve every parameter.
    """
    samples = [_sample(g.detach().reshape(-1)) for g in grads]
    device = samples[0].device
    mags = torch.cat(samples).abs().float()
    bounds = torch.tensor(
        [
            torch.finfo(torch.float32).tiny * 2**-23,
            FP16_MIN_SUBNORMAL / DEFAULT_LOSS_SCALE,
            FP16_MIN_SUBNORMAL,
            FP16_MIN_NORMAL,
        ],
        device=device,
    )
    bucket = torch.bucketize(mags, bounds, right=True)
    lengths = torch.tensor([s.numel() for s in samples], device=device)
    segment = _segment_ids(tuple(s.numel() for s in samples), device)
    counts = torch.bincount(segment * 5 + bucket, minlength=5 * len(samples)).view(-1, 5).float()
    return torch.stack(
        [lengths.float(), counts[:, 1] + counts[:, 2], counts[:, 1], counts[:, 3], counts[:, 1:].sum(1)], dim=1
    )


@dataclass
class ParamStats:
    """Per-layer sums, plus each parameter's std (init rules read the weight's) and mean (the bias's)."""

    layers: dict[str, ParamLayerStats]
    param_std: dict[str, float]
    param_mean: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def layer_param_stats(
    params: Mapping[str, Tensor], groups: dict[str, list[str]], optimizer: OptimizerSpec | None
) -> ParamStats:
    """Reduce parameters to per-layer sums with fused per-list ops and one host read."""
    names = [n for members in groups.values() for n in members if n in params]
    if not names:
        return ParamStats({}, {}, {})
    weights = [params[n].detach() for n in names]
    weight_norms = torch.stack(torch._foreach_norm([w.float() if w.dtype != torch.float32 else w for w in weights]))
    # std^2 = ||W||^2/n - mean^2 with the exact norm; the mean (near 0 for weight matrices) from a sample.
    sample_means = torch.stack([_sample(w.reshape(-1)).float().mean() for w in weights])
    numels = torch.tensor([float(w.numel()) for w in weights], device=weight_norms.device)
    weight_std = (weight_norms.square() / numels - sample_means.square()).clamp_min(0).sqrt()
    moments = torch.stack([weight_norms, weight_std, sample_means], dim=1)
    grads_or_none = [params[n].grad for n in names]
    with_grad = [i for i, g in enumerate(grads_or_none) if g is not None]
    grads = [g.detach() for g in grads_or_none if g is not None]
    grad_norms = torch.stack(torch._foreach_norm(grads)).float() if grads else moments.new_zeros(0)
    fp16 = _fp16_counts(grads) if grads else moments.new_zeros(0, 5)
    updates = moments.new_zeros(len(grads))
    if optimizer is not None and grads:
        if optimizer.name == "sgd" and not optimizer.weight_decay:
            updates = optimizer.lr * grad_norms
        else:
            updates = torch.stack(
                [
                    torch.linalg.vector_norm(first_update(params[names[i]].detach().float(), g.float(), optimizer))
                    for i, g in zip(with_grad, grads, strict=True)
                ]
            )
    host = torch.cat([moments.reshape(-1), grad_norms, fp16.reshape(-1), updates]).cpu().tolist()
    k = 3 * len(names)
    norm_std = {n: (host[3 * i], host[3 * i + 1]) for i, n in enumerate(names)}
    grad_norm = dict(zip((names[i] for i in with_grad), host[k : k + len(grads)], strict=True))
    k += len(grads)
    fp16_rows = {names[i]: host[k + 5 * j : k + 5 * j + 5] for j, i in enumerate(with_grad)}
    k += 5 * len(grads)
    update = dict(zip((names[i] for i in with_grad), host[k : k + len(grads)], strict=True))
    nonfinite = {n: _count_nonfinite(params[n].grad) for n, g in grad_norm.items() if not math.isfinite(g)}
    result = {}
    for layer, members in groups.items():
        members = [m for m in members if m in params]
        result[layer] = _layer_sums(members, params, norm_std, grad_norm, fp16_rows, update, nonfinite, optimizer)
    return ParamStats(
        result, {n: std for n, (_, std) in norm_std.items()}, {n: host[3 * i + 2] for i, n in enumerate(names)}
    )


def _count_nonfinite(grad: Tensor | None) -> int:
    """Exact NaN/Inf count, only for gradients whose norm was not finite (the rare path)."""
    return 0 if grad is None else int((~torch.isfinite(grad)).sum())


def _layer_sums(
    members: list[str],
    params: Mapping[str, Tensor],
    norm_std: dict[str, tuple[float, float]],
    grad_norm: dict[str, float],
    fp16_rows: dict[str, list[float]],
    update: dict[str, float],
    nonfinite: dict[str, int],
    optimizer: OptimizerSpec | None,
) -> ParamLayerStats:
    """Combine one layer's parameters; fp16 counts scale from the sample to the whole tensor."""
    numel = {m: params[m].numel() for m in members}
    with_grad = [m for m in members if m in grad_norm]

    def scaled(m: str, column: int) -> float:
        row = fp16_rows[m]
        return row[column] / row[0] * numel[m] if row[0] else 0.0

    weight_sq = sum(norm_std[m][0] ** 2 for m in members)
    finite_grad_sq = sum(grad_norm[m] ** 2 for m in with_grad if math.isfinite(grad_norm[m]))
    return ParamLayerStats(
        numel=sum(numel.values()),
        grad_sq=finite_grad_sq if with_grad else None,
        weight_sq=weight_sq,
        update_sq=sum(update[m] ** 2 for m in with_grad) if (optimizer and with_grad) else None,
        nonfinite=sum(nonfinite.get(m, 0) for m in with_grad),
        flushed=round(sum(scaled(m, 1) for m in with_grad)),
        flushed_scaled=round(sum(scaled(m, 2) for m in with_grad)),
        subnormal=round(sum(scaled(m, 3) for m in with_grad)),
        nonzero_grads=round(sum(scaled(m, 4) for m in with_grad)),
        missing_grads=sum(1 for m in members if m not in grad_norm and params[m].requires_grad),
    )
