"""Behavioural proofs for the noise rules' zoo cases: per-sample gradients by a plain loop, and training runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


def per_sample_grads(model: nn.Module, loss: str, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Each parameter's gradient for each sample, one backward per sample: [n, *param.shape]."""
    fn = LOSSES[loss]
    rows: dict[str, list[Tensor]] = {name: [] for name, _ in model.named_parameters()}
    for i in range(x.shape[0]):
        model.zero_grad()
        fn(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            rows[name].append(torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
    return {name: torch.stack(g) for name, g in rows.items()}


def simple_noise_scale(grads: dict[str, Tensor]) -> float:
    """B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018), from per-sample gradients."""
    flat = torch.cat([g.flatten(1) for g in grads.values()], dim=1).double()
    mean = flat.mean(0)
    return float(flat.var(0, unbiased=True).sum() / mean.pow(2).sum())


def gsnr(g: Tensor) -> float:
    """Per-parameter E[g]^2 / Var[g] averaged over the parameter's entries (Liu et al. 2020)."""
    flat = g.flatten(1).double()
    return float((flat.mean(0).pow(2) / flat.var(0, unbiased=True).clamp_min(1e-30)).mean())


def full_loss_after_sgd(case, batch: int, steps: int, lr: float) -> float:
    """Loss on the whole set after `steps` SGD steps on random minibatches of `batch` samples."""
    model, loss, (x,), y = case.build()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        pick = torch.randperm(x.shape[0], generator=generator)[:batch]
        optimizer.zero_grad()
        LOSSES[loss](model(x[pick]), y[pick]).backward()
        optimizer.step()
    with torch.no_grad():
        return float(LOSSES[loss](model(x), y))


def prove_batch_size_wasteful(case, m, prefixes) -> dict:
    """The batch is >= 10x the noise scale, and 1/16 of it trains as well per step (the rest is wasted)."""
    model, loss, (x,), y = case.build()
    b_simple = simple_noise_scale(per_sample_grads(model, loss, x, y))
    assert x.shape[0] >= 10 * b_simple, (x.shape[0], b_simple)
    with torch.no_grad():
        start = float(LOSSES[loss](model(x), y))
    full = full_loss_after_sgd(case, x.shape[0], steps=40, lr=0.1)
    small = full_loss_after_sgd(case, x.shape[0] // 16, steps=40, lr=0.1)
    assert full < 0.1 * start and small < 0.1 * start, (start, full, small)
    assert small < 3 * full + 1e-3 * start, (full, small)
    return {"batch": x.shape[0], "b_simple": b_simple, "start": start, "full_batch": full, "batch_16th": small}


def prove_noisy_layer(case, m, prefixes) -> dict:
    """The named layer's GSNR (plain per-sample loop) is a decade below the other layers' median."""
    model, loss, (x,), y = case.build()
    grads = per_sample_grads(model, loss, x, y)
    layers: dict[str, list[Tensor]] = {}
    for name, g in grads.items():
        layers.setdefault(name.rsplit(".", 1)[0], []).append(g)
    ratios = {layer: gsnr(torch.cat([g.flatten(1) for g in gs], dim=1)) for layer, gs in layers.items()}
    for prefix in prefixes:
        noisy = ratios[prefix]
        others = sorted(v for layer, v in ratios.items() if layer != prefix)
        assert noisy * 10 < float(torch.tensor(others).median()), ratios
    return {"gsnr": ratios}
