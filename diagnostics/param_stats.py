"""Per-layer parameter statistics after one backward pass, with fused per-list ops."""

from __future__ import annotations

from dataclasses import dataclass

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


_QUANTITIES = ("grad_sq", "update_sq", "nonfinite", "flushed", "flushed_scaled", "subnormal", "nonzero")


@torch.no_grad()
def layer_param_stats(
    params: dict[str, Tensor], groups: dict[str, list[str]], optimizer: OptimizerSpec | None
) -> dict[str, ParamLayerStats]:
    """Reduce each layer's parameters to sums with a few whole-model ops and one host read."""
    layer_names = list(groups)
    owner = {member: i for i, layer in enumerate(layer_names) for member in groups[layer]}
    names = [n for n in params if n in owner]
    if not names:
        return {}
    device = params[names[0]].device
    weight_sq = torch.stack(torch._foreach_norm([params[n].detach().float() for n in names])).square()
    weight_by_layer = torch.zeros(len(layer_names), device=device).index_add_(
        0, torch.tensor([owner[n] for n in names], device=device), weight_sq
    )
    with_grad = [n for n in names if params[n].grad is not None]
    sums = torch.zeros(len(_QUANTITIES), len(layer_names), device=device)
    if with_grad:
        seg = torch.repeat_interleave(
            torch.tensor([owner[n] for n in with_grad], device=device),
            torch.tensor([params[n].numel() for n in with_grad], device=device),
        )
        g = torch.cat([params[n].grad.detach().reshape(-1).float() for n in with_grad])
        finite = torch.isfinite(g)
        mag = g.abs()
        quantities = {
            "grad_sq": torch.where(finite, g, 0.0).square(),
            "nonfinite": (~finite).float(),
            "flushed": ((mag > 0) & (mag < FP16_MIN_SUBNORMAL)).float(),
            "flushed_scaled": ((mag > 0) & (mag * DEFAULT_LOSS_SCALE < FP16_MIN_SUBNORMAL)).float(),
            "subnormal": ((mag >= FP16_MIN_SUBNORMAL) & (mag < FP16_MIN_NORMAL)).float(),
            "nonzero": (mag > 0).float(),
        }
        if optimizer is not None:
            w = torch.cat([params[n].detach().reshape(-1).float() for n in with_grad])
            quantities["update_sq"] = first_update(w, g, optimizer).square()
        for k, key in enumerate(_QUANTITIES):
            if key in quantities:
                sums[k].index_add_(0, seg, quantities[key])
    table = torch.cat([weight_by_layer[None], sums]).cpu().tolist()
    result: dict[str, ParamLayerStats] = {}
    for i, layer in enumerate(layer_names):
        members = [m for m in groups[layer] if m in params]
        missing = sum(1 for m in members if params[m].grad is None)
        has_grad = missing < len(members)
        col = {key: table[k + 1][i] for k, key in enumerate(_QUANTITIES)}
        result[layer] = ParamLayerStats(
            numel=sum(params[m].numel() for m in members),
            grad_sq=col["grad_sq"] if has_grad else None,
            weight_sq=table[0][i],
            update_sq=col["update_sq"] if (optimizer and has_grad) else None,
            nonfinite=int(col["nonfinite"]),
            flushed=int(col["flushed"]),
            flushed_scaled=int(col["flushed_scaled"]),
            subnormal=int(col["subnormal"]),
            nonzero_grads=int(col["nonzero"]),
            missing_grads=missing,
        )
    return result
