"""Top algebraic Hessian eigenvalue by Lanczos on Hessian-vector products (Pearlmutter 1994).

Power iteration finds the largest-*magnitude* eigenvalue, which on an indefinite Hessian (a
regression net far from its targets) can be a large negative one while lr_too_high needs the top
*algebraic* one. Lanczos with full reorthogonalisation gives the top of the spectrum in a few
dozen products (Ghorbani et al. 2019; Golub & Van Loan 2013, §10.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

Operator = Callable[[Tensor], Tensor]  # a symmetric linear map on flat vectors


@dataclass(frozen=True)
class LanczosResult:
    """The top Ritz value, its residual bound |H x - theta x| and the products it took, plus the run's spectrum."""

    eigenvalue: float
    residual: float
    steps: int
    ritz_values: tuple[float, ...] = ()  # every Ritz value of T_k, largest first
    ritz_residuals: tuple[float, ...] = ()  # |lambda - theta_i| <= residual_i for some eigenvalue lambda
    ritz_weights: tuple[float, ...] = ()  # squared first components: the start vector's quadrature weights (SLQ)
    tridiagonal_trace: float = 0.0  # sum of alphas = tr(Q^T H Q), exact on the Krylov subspace
    beta_last: float = 0.0  # |r_k|, the norm of the last Lanczos residual vector
    converged: bool = True  # the top Ritz residual met rel_tol (or the Krylov space became invariant)
    basis: Tensor | None = field(default=None, compare=False, repr=False)  # orthonormal rows Q when kept

    def top(self, k: int) -> list[float]:
        """The k largest Ritz values, largest first."""
        return list(self.ritz_values[:k])


def _ritz(alphas: list[float], betas: list[float]) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending) and eigenvectors of the tridiagonal T_k."""
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(t)
    return values.flip(0), vectors.flip(1)


def _result(
    alphas: list[float], betas: list[float], basis: Tensor | None, rel_tol: float, unit: float
) -> LanczosResult:
    """Ritz values with residual bounds beta_k * |last eigenvector entry| (Parlett 1998, §13.1), floored at rounding.

    `unit` is the products' relative rounding error: an exact-arithmetic residual of 0 still leaves
    unit * |T| of error in each Ritz value.
    """
    values, vectors = _ritz(alphas, betas)
    residuals = (betas[-1] * vectors[-1, :]).abs().clamp(min=unit * float(values.abs().max()))
    return LanczosResult(
        float(values[0]),
        float(residuals[0]),
        len(alphas),
        tuple(values.tolist()),
        tuple(residuals.tolist()),
        tuple((vectors[0, :] ** 2).tolist()),
        math.fsum(alphas),
        betas[-1],
        bool(residuals[0] <= rel_tol * max(abs(float(values[0])), 1e-30)) or betas[-1] == 0.0,
        basis,
    )


def _converged(result: LanczosResult, k: int, rel_tol: float) -> bool:
    """Whether the top k Ritz values (or all there are when fewer) meet rel_tol."""
    pairs = list(zip(result.ritz_values, result.ritz_residuals, strict=True))[:k]
    return all(r <= rel_tol * max(abs(v), 1e-30) for v, r in pairs)


def start_vector(dim: int, like: Tensor, seed: int, start: Tensor | None) -> Tensor:
    """A seeded random unit vector, plus the unit `start` direction when given and non-zero.

    The gradient lies mostly in the top Hessian eigenspace (Gur-Ari et al. 2018), so starting from it
    converges in a few products where a random start needs a dozen more; the random half keeps a
    component along every eigenvector, so a gradient orthogonal to the top one cannot hide it.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(dim, generator=generator, dtype=torch.float64)
    q.div_(q.norm())  # in place: each float64 temporary costs about as much as a small model's fwd+bwd
    if start is not None:
        s = start.detach().reshape(-1).to("cpu", torch.float64)
        norm = float(s.norm())
        if norm > 0 and math.isfinite(norm):
            q.add_(s, alpha=1.0 / norm)
    unit: Tensor = q.div_(q.norm()).to(like)
    return unit


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
    k: int = 1,
    start: Tensor | None = None,
) -> LanczosResult:
    """Top algebraic eigenvalues of a symmetric operator; stops once the top k Ritz residuals <= rel_tol * |theta|.

    The residual bounds the distance from theta to an eigenvalue (Kahan/Parlett), so rel_tol=1e-3 keeps
    the estimate within 0.1%; in practice the error is about residual^2 / gap, far smaller. `start` (the
    gradient) joins the random start vector (start_vector).
    """
    steps = max(1, min(max_steps, dim))
    full = steps * dim * like.element_size() <= max_basis_bytes
    rows = steps if full else 2
    # full: rows past i are never read, so no zero-fill (it touched steps x dim numbers up front)
    basis = like.new_empty((rows, dim)) if full else like.new_zeros((rows, dim))
    basis[0] = start_vector(dim, like, seed, start)
    alphas: list[float] = []
    betas: list[float] = []
    unit = 16 * torch.finfo(like.dtype).eps  # relative rounding of one product and its dot products
    for i in range(steps):
        current = basis[i % rows]
        w = operator(current)
        block = basis[: i + 1] if full else basis
        coefficients = block @ w  # Q^T w: its row for `current` is alpha, so no separate dot product
        alpha = float(coefficients[i % rows])
        w = torch.addmv(w, block.T, coefficients, alpha=-1)  # Gram-Schmidt twice is enough (Giraud et al. 2005)
        w.addmv_(block.T, block @ w, alpha=-1)  # in place on the fresh w, never on the operator's output
        beta = float(w.norm())
        if not (math.isfinite(alpha) and math.isfinite(beta)):  # NaN/Inf anywhere in H v reaches both
            raise FloatingPointError("a Hessian-vector product is NaN/Inf")
        alphas.append(alpha)
        betas.append(beta)
        result = _result(alphas, betas, basis[: i + 1] if full else None, rel_tol, unit)
        if (i + 1 >= min(k, steps) and _converged(result, k, rel_tol)) or i + 1 == steps or betas[-1] == 0.0:
            return result
        basis[(i + 1) % rows] = w / betas[-1]
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
