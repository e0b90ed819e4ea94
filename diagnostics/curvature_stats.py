"""Curvature statistics with intervals from one Lanczos run: top-k eigenvalues, Hutch++ trace, condition ratio, SLQ density.

- Top eigenvalues are the Lanczos Ritz values; |lambda - theta| <= |r| (the Ritz residual) bounds each one.
- The trace splits as tr(H) = tr(Q^T H Q) + tr((I-QQ^T) H (I-QQ^T)) for the orthonormal Lanczos basis Q:
  the first part is the tridiagonal's trace (exact, no extra products), the second is Hutchinson's estimate
  with Rademacher probes projected off Q. This is Hutch++ (Meyer et al. 2021) with the Krylov subspace as its
  low-rank sketch, which captures the top eigenvectors better than a random sketch (Persson et al. 2022) and
  costs nothing beyond the Lanczos run. Its interval is mean +- t * sd / sqrt(m) over the m probes.
- The density is stochastic Lanczos quadrature with one probe, the Lanczos start vector (Ghorbani et al. 2019).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .curvature import LanczosResult, Operator, lanczos_top_eigenvalue
from .hvp import hessian_operator

LEVEL = 0.95
TOP_K = 5
TRACE_PROBES = 20  # the standalone hessian_trace's default; the checks' is AnalysisOptions.trace_probes
LAMBDA_TOL = 2e-2  # the checks stop once lambda_max's residual bound is 2% of it: its error, ~r^2/gap, is ~0.1%
DENSITY_POINTS = 100
DENSITY_WIDTH = 0.02  # Gaussian sigma as a fraction of the Ritz values' span


@dataclass(frozen=True)
class Interval:
    """A value with its interval at `level`, the products or probes behind it, and how it was made."""

    value: float
    low: float | None
    high: float | None
    samples: int
    method: str
    level: float = LEVEL


@dataclass
class CurvatureStats:
    """What the curvature check measured with intervals, keyed as in Report.estimates, and the spectrum."""

    estimates: dict[str, Interval] = field(default_factory=dict)
    top_eigenvalues: list[float] = field(default_factory=list)
    density_grid: list[float] = field(default_factory=list)
    density: list[float] = field(default_factory=list)


def t_quantile(p: float, dof: int) -> float:
    """Student-t quantile by the Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5): no scipy dependency."""
    z = statistics.NormalDist().inv_cdf(p)
    n = float(dof)
    return (
        z
        + (z**3 + z) / (4 * n)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * n**3)
    )


def top_eigenvalue_interval(result: LanczosResult) -> Interval:
    """Lambda_max within theta +- |r| once converged; unconverged, only theta <= lambda_max holds (a Rayleigh quotient).

    The residual bound places *an* eigenvalue within |r| of theta; it is lambda_max's once the top Ritz value has
    converged from a random start. Before that lambda_max may lie far above, so the interval is one-sided.
    samples = Hessian-vector products; the bound is deterministic, so level says "at least" 0.99.
    """
    theta, r = result.eigenvalue, result.residual
    if not result.converged:
        return Interval(theta, theta, None, result.steps, "lanczos rayleigh quotient (unconverged: lower bound)", 0.99)
    return Interval(theta, theta - r, theta + r, result.steps, "lanczos residual bound", 0.99)


def _probe_values(
    operator: Operator, dim: int, like: Tensor, probes: int, basis: Tensor | None, seed: int
) -> list[float]:
    """z^T H z for Rademacher z projected off the basis (when given): the remainder's Hutchinson samples."""
    generator = torch.Generator(device="cpu").manual_seed(seed + 1)
    values = []
    for _ in range(probes):
        z = (torch.randint(0, 2, (dim,), generator=generator, dtype=torch.float64) * 2 - 1).to(like)
        if basis is not None:
            for _ in range(2):  # twice, as in the Lanczos run, so z stays orthogonal to Q in float32
                z = z - basis.T @ (basis @ z)
        hz = operator(z)
        values.append(float(torch.dot(z, hz)))  # in the products' dtype: a float64 copy of both cost more than H z
    if not all(math.isfinite(v) for v in values):
        raise FloatingPointError("a Hessian-vector product is NaN/Inf")
    return values


def trace_interval(
    operator: Operator,
    dim: int,
    like: Tensor,
    probes: int = TRACE_PROBES,
    lanczos: LanczosResult | None = None,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Hutch++ on the Lanczos subspace when its basis was kept, else Hutchinson; t interval over the probes."""
    basis = None if lanczos is None else lanczos.basis
    exact = 0.0 if basis is None or lanczos is None else lanczos.tridiagonal_trace
    if basis is not None and basis.shape[0] >= dim:
        return Interval(exact, exact, exact, basis.shape[0], "lanczos (the basis spans the whole space)", level)
    values = _probe_values(operator, dim, like, max(1, probes), basis, seed)
    mean = math.fsum(values) / len(values)
    method = "hutchinson (rademacher)"
    if basis is not None:
        method = f"hutch++ ({basis.shape[0]} lanczos vectors exact + hutchinson remainder)"
    if len(values) < 2:
        return Interval(exact + mean, None, None, len(values), method, level)
    half = t_quantile(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(exact + mean, exact + mean - half, exact + mean + half, len(values), method, level)


def condition_ratio(top: Interval, trace: Interval, dim: int) -> Interval | None:
    """lambda_max / (trace / n): how far the top eigenvalue stands above the mean one; None unless the trace > 0."""
    if trace.value <= 0:
        return None
    value = top.value * dim / trace.value
    low = high = None
    if top.low is not None and trace.low is not None and trace.high is not None and trace.low > 0:
        # worst corners of the two intervals: conservative, at the level of the wider (the trace's)
        low = min(top.low * dim / trace.high, top.low * dim / trace.low)
        if top.high is not None:
            high = max(top.high * dim / trace.low, top.high * dim / trace.high)
    method = "lambda_max / (trace / n), interval from the corners"
    return Interval(value, low, high, top.samples + trace.samples, method, trace.level)


def slq_density(result: LanczosResult, points: int = DENSITY_POINTS) -> tuple[list[float], list[float]]:
    """Gaussian-smoothed spectral density from the run's Ritz values and start-vector weights (one-probe SLQ)."""
    nodes = torch.tensor(result.ritz_values, dtype=torch.float64)
    weights = torch.tensor(result.ritz_weights, dtype=torch.float64)
    span = float(nodes.max() - nodes.min()) or max(abs(float(nodes[0])), 1.0)
    sigma = DENSITY_WIDTH * span
    grid = torch.linspace(float(nodes.min()) - 3 * sigma, float(nodes.max()) + 3 * sigma, points, dtype=torch.float64)
    kernel = torch.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return grid.tolist(), (kernel @ weights).tolist()


def _operator(loss_fn: Callable[[], Tensor], params: Sequence[Tensor]) -> tuple[Operator, int, Tensor]:
    """The Hessian operator of loss_fn() over params, for the standalone entry points."""
    op = hessian_operator(loss_fn(), params)
    if op is None:
        raise ValueError("no parameter that requires grad reaches the loss")
    return op, op.dim, op.gradient


def lanczos_top_eigenvalues(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    k: int = TOP_K,
    max_iterations: int = 30,
    tol: float = 1e-3,
    seed: int = 0,
) -> LanczosResult:
    """Top-k algebraic Hessian eigenvalues of loss_fn() standalone (benchmarks); result.steps = products used."""
    op, dim, like = _operator(loss_fn, params)
    return lanczos_top_eigenvalue(op, dim, like, max_steps=max_iterations, rel_tol=tol, seed=seed, k=k, start=like)


def hessian_trace(
    loss_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    probes: int = TRACE_PROBES,
    lanczos_iterations: int = 30,
    tol: float = 1e-3,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Hessian trace of loss_fn() standalone; lanczos_iterations=0 gives plain Hutchinson with `probes` products."""
    op, dim, like = _operator(loss_fn, params)
    run = None
    if lanczos_iterations > 0:
        run = lanczos_top_eigenvalue(
            op, dim, like, max_steps=lanczos_iterations, rel_tol=tol, seed=seed, k=TOP_K, start=like
        )
    return trace_interval(op, dim, like, probes, run, seed, level)
