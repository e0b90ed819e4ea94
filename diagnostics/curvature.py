"""Top Hessian eigenvalue by power iteration on Hessian-vector products (Pearlmutter 1994)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return functools.reduce(torch.add, [(x * y).sum() for x, y in zip(a, b, strict=True)])


def top_hessian_eigenvalue(
    loss_fn: Callable[[], Tensor],
    params: list[Tensor],
    iterations: int = 30,
    rel_tol: float = 1e-3,
    seed: int = 0,
) -> float:
    """Largest-magnitude eigenvalue of the loss Hessian w.r.t. params (Yao et al. 2020, PyHessian)."""
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    vec = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    norm = _dot(vec, vec).sqrt()
    vec = [v / norm for v in vec]
    eigenvalue = 0.0
    for _ in range(iterations):
        hv = torch.autograd.grad(grads, params, grad_outputs=vec, retain_graph=True)
        estimate = float(_dot(vec, list(hv)))
        hv_norm = _dot(list(hv), list(hv)).sqrt()
        if not torch.isfinite(hv_norm) or float(hv_norm) == 0.0:
            return estimate
        vec = [h.detach() / hv_norm for h in hv]
        converged = abs(estimate - eigenvalue) <= rel_tol * max(abs(estimate), 1e-12)
        eigenvalue = estimate
        if converged:
            break
    return eigenvalue


def stability_limit(lr: float, momentum: float) -> float:
    """Largest stable sharpness for SGD with heavy-ball momentum: 2(1+beta)/lr (Cohen et al. 2021)."""
    return 2.0 * (1.0 + momentum) / lr
