"""Top algebraic Hessian eigenvalue by Lanczos on Hessian-vector products (Pearlmutter 1994).

Power iteration finds the largest-*magnitude* eigenvalue, which on an indefinite Hessian (a
regression net far from its targets) can be a large negative one while lr_too_high needs the top
*algebraic* one. Lanczos with full reorthogonalisation gives the top of the spectrum in a few
dozen products (Ghorbani et al. 2019; Golub & Van Loan 2013, §10.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Operator = Callable[[Tensor], Tensor]  # a symmetric linear map on flat vectors


@dataclass(frozen=True)
class LanczosResult:
    """The top Ritz value, its residual bound |H x - theta x| and the products it took."""

    eigenvalue: float
    residual: float
    steps: int


def _top_ritz(alphas: list[float], betas: list[float]) -> tuple[float, float]:
    """Top eigenvalue of the tridiagonal T_k and its residual bound beta_k * |last eigenvector entry|."""
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(t)
    return float(values[-1]), abs(betas[-1] * float(vectors[-1, -1]))


# Full reorthogonalisation keeps every Lanczos vector: steps x parameters numbers. Above this the basis
# keeps only the last two vectors (plain Lanczos): orthogonality then decays, which duplicates converged
# Ritz values ("ghosts") but leaves the top one accurate (Paige 1980), at PyHessian's memory.
MAX_BASIS_BYTES = 2 * 1024**3


def lanczos_top_eigenvalue(
    operator: Operator,
    dim: int,
    like: Tensor,
    max_steps: int = 30,
    rel_tol: float = 1e-3,
    seed: int = 0,
    max_basis_bytes: int = MAX_BASIS_BYTES,
) -> LanczosResult:
    """Top algebraic eigenvalue of a symmetric operator; stops once the Ritz residual <= rel_tol * |theta|.

    The residual bounds the distance from theta to an eigenvalue (Kahan/Parlett), so rel_tol=1e-3 keeps
    the estimate within 0.1%; in practice the error is about residual^2 / gap, far smaller.
    """
    steps = max(1, min(max_steps, dim))
    full = steps * dim * like.element_size() <= max_basis_bytes
    rows = steps if full else 2
    generator = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(dim, generator=generator, dtype=torch.float64).to(like)
    basis = like.new_zeros((rows, dim))
    basis[0] = q / q.norm()
    alphas: list[float] = []
    betas: list[float] = []
    for k in range(steps):
        current = basis[k % rows]
        w = operator(current)
        alpha = float(torch.dot(w.double(), current.double()))
        if not math.isfinite(alpha) or not bool(torch.isfinite(w).all()):
            raise FloatingPointError("a Hessian-vector product is NaN/Inf")
        alphas.append(alpha)
        block = basis[: k + 1] if full else basis
        for _ in range(2):  # Gram-Schmidt twice is enough (Giraud et al. 2005)
            w = w - block.T @ (block @ w)
        betas.append(float(w.double().norm()))
        theta, residual = _top_ritz(alphas, betas)
        if residual <= rel_tol * max(abs(theta), 1e-30) or k + 1 == steps:
            return LanczosResult(theta, residual, k + 1)
        basis[(k + 1) % rows] = w / betas[-1]
    raise AssertionError("unreachable: the loop returns at its last step")


def stability_limit(lr: float, momentum: float) -> float:
    """Largest stable sharpness for SGD with heavy-ball momentum: 2(1+beta)/lr (Cohen et al. 2021)."""
    return 2.0 * (1.0 + momentum) / lr


def adam_stability_limit(lr: float, beta1: float) -> float:
    """Largest stable preconditioned sharpness for Adam: (2+2 beta1)/((1-beta1) lr) (Cohen et al. 2022).

    Adam's first moment is an EMA m = beta1 m + (1-beta1) g; on a quadratic with preconditioned curvature
    a, the step x <- x - lr m / P is stable iff a * lr * (1-beta1) < 2(1+beta1): 38/lr at beta1=0.9.
    """
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)
