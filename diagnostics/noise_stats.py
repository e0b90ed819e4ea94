"""Gradient-noise statistics from per-sample gradients, each with a bootstrap interval over samples.

Every statistic is a function of the per-sample gradients g_i (i = 1..n) through sample weights w
(w = 1 for the batch itself, multinomial counts summing to n for a bootstrap resample), so one
formula gives the value and its resamples:

- G = sum_i w_i g_i / n, the mean gradient; tr(Sigma) = (sum_i w_i |g_i - G|^2) / (n - 1).
- B_simple = tr(Sigma) / |G|^2_unbiased (McCandlish et al. 2018), with |G|^2_unbiased =
  |G|^2 - tr(Sigma)/n (the mean off-diagonal Gram entry): the plug-in |G|^2 carries tr(Sigma)/n
  of noise, which would cap B_simple near n. Infinite when noise swamps the signal.
- Norm test (Byrd et al. 2012): tr(Sigma)/n <= theta^2 |G|^2; ratio = tr(Sigma) / (n theta^2 |G|^2).
- Inner-product test (Bollapragada et al. 2018): Var_i(g_i . G)/n <= theta^2 |G|^4.
- Orthogonality test (ibid.): E|g_i - (g_i . G / |G|^2) G|^2 / n <= nu^2 |G|^2.
  A ratio above 1 fails the test; n * ratio is the batch size that would pass it.
- GSNR (Liu et al. 2020): mean_j^2 / var_j per parameter j, averaged over parameters with var_j > 0.

The whole-model numbers need only the Gram matrix K = X X^T (n x n), the GSNR only the
weighted first and second moments per parameter, so 200 resamples cost little beyond the pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .noise_layers import LayerSamples

NORM_THETA = 0.9  # Bollapragada et al. 2018 run both the norm-style and inner-product tests at theta = 0.9
INNER_THETA = 0.9
ORTHO_NU = math.tan(math.radians(80.0))  # the sampled direction may deviate up to 80 degrees from G
RESAMPLES = 200
LEVEL = 0.95
SEED = 0
METHOD = "bootstrap over samples"  # basic interval on the log scale, see _interval
_COLUMN_CHUNK = 1 << 16  # parameters per bootstrap block: bounds the R x chunk moment matrices


@dataclass(frozen=True)
class Interval:
    """A value and its bootstrap interval (low/high None where the resamples bound nothing)."""

    value: float
    low: float | None
    high: float | None


@dataclass
class NoiseMeasure:
    """What the noise check found: whole-model estimates and per-layer GSNR and moments."""

    batch_size: int
    estimates: dict[str, Interval] = field(default_factory=dict)
    layer_gsnr: dict[str, Interval] = field(default_factory=dict)
    layer_grad_sq: dict[str, float] = field(default_factory=dict)  # |G_l|^2 of the mean gradient
    layer_trace: dict[str, float] = field(default_factory=dict)  # tr(Sigma_l), per-sample covariance
    grad_sq: float = 0.0
    trace: float = 0.0


def resample_weights(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> Tensor:
    """Row 0 is the batch itself (all ones); the rest are seeded multinomial resample counts."""
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (resamples, n), generator=gen)
    counts = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(resamples, n, dtype=torch.float64)
    )
    return torch.cat([torch.ones(1, n, dtype=torch.float64), counts])


def _interval(values: Tensor) -> Interval:
    """Row 0's value with the basic bootstrap interval on the log scale: v^2/q_high .. v^2/q_low.

    Every statistic here is positive and biased by resampling (duplicated samples shrink the
    variance), so the plain percentile interval misses to one side; reflecting the quantiles about
    the estimate on the log scale removes that bias to first order and keeps the bounds positive.
    """
    value = float(values[0])
    rest = values[1:]
    rest = torch.where(torch.isnan(rest), torch.full_like(rest, math.inf), rest)  # undefined = unbounded
    q_low, q_high = torch.quantile(rest, torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=rest.dtype)).tolist()
    if not value > 0 or not math.isfinite(value):
        return Interval(value, None, None)
    low = value * value / q_high if q_high > 0 else None  # q_high = inf gives 0: no lower bound found
    high = value * value / q_low if q_low > 0 and math.isfinite(q_low) else None
    return Interval(value, low, high)


def gram_statistics(gram: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """|G|^2, tr(Sigma), B_simple and the three test ratios for each weight row, from the Gram matrix."""
    n = gram.shape[0]
    a = weights / n  # [R, n]
    ka = a @ gram  # [R, n]: p_i = g_i . G
    grad_sq = (ka * a).sum(1)
    diag = gram.diagonal()
    trace = ((weights * diag).sum(1) - n * grad_sq) / (n - 1)
    unbiased = grad_sq - trace / n
    noise_scale = torch.where(unbiased > 0, trace / unbiased, torch.full_like(trace, math.inf))
    inner_var = ((weights * ka**2).sum(1) - n * grad_sq**2) / (n - 1)
    ortho = (weights * (diag - ka**2 / grad_sq[:, None])).sum(1) / (n - 1)
    return {
        "grad_sq": grad_sq,
        "trace": trace,
        "gradient_noise_scale": noise_scale,
        "norm_test_ratio": trace / (n * NORM_THETA**2 * grad_sq),
        "inner_product_test_ratio": inner_var / (n * INNER_THETA**2 * grad_sq**2),
        "orthogonality_test_ratio": ortho / (n * ORTHO_NU**2 * grad_sq),
    }


def gsnr_sums(x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Per weight row: the sum of per-parameter GSNRs and how many parameters have non-zero variance."""
    n = x.shape[0]
    total = torch.zeros(weights.shape[0], dtype=torch.float64)
    count = torch.zeros(weights.shape[0], dtype=torch.float64)
    counts = weights.float()  # whole numbers up to n: exact in float32
    for start in range(0, x.shape[1], _COLUMN_CHUNK):
        block = x[:, start : start + _COLUMN_CHUNK].double()
        # float32 GEMMs on the centred block (half the float64 time): sum_i w_i (x_i - mean_w)^2 =
        # sum_i w_i c_i^2 - (sum_i w_i c_i)^2 / n for any centre, here the batch mean, so nothing cancels
        centre = block.mean(0)
        c = (block - centre).float()
        first = (counts @ c).double()
        mean = centre + first / n
        var = ((counts @ (c * c)).double() - first**2 / n) / (n - 1)
        scale = (block**2).mean(0).clamp_min(torch.finfo(torch.float64).tiny)
        live = var > 1e-12 * scale  # below this the variance is rounding: the parameter is noiseless
        ratio = torch.where(live, mean**2 / torch.where(live, var, torch.ones_like(var)), torch.zeros_like(var))
        total += ratio.sum(1)
        count += live.sum(1)
    return total, count


def gsnr_moments(col_sum: Tensor, col_sq: Tensor, n: int) -> tuple[float, float]:
    """gsnr_sums for the batch itself, from sum_i g_i and sum_i g_i^2 per parameter."""
    mean = col_sum.double() / n
    var = (col_sq.double() - n * mean**2) / (n - 1)
    scale = (col_sq.double() / n).clamp_min(torch.finfo(torch.float64).tiny)
    live = var > 1e-12 * scale
    ratio = torch.where(live, mean**2 / torch.where(live, var, torch.ones_like(var)), torch.zeros_like(var))
    return float(ratio.sum()), float(live.sum())


def _scaled(resampled: Tensor, value: float) -> Interval:
    """The subset's bootstrap interval, scaled by value / subset value (the interval is multiplicative)."""
    base = float(resampled[0])
    if not (base > 0 and value > 0) or not all(map(math.isfinite, (base, value))):
        return Interval(value, None, None)
    interval, factor = _interval(resampled), value / base
    low = None if interval.low is None else interval.low * factor
    high = None if interval.high is None else interval.high * factor
    return Interval(value, low, high)


def _ratio(total: Tensor, count: Tensor) -> Tensor:
    """Mean GSNR per row; NaN (unbounded in the interval) where no parameter had variance."""
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def noise_statistics(
    per_layer: Mapping[str, Tensor | LayerSamples], resamples: int = RESAMPLES, seed: int = SEED
) -> NoiseMeasure:
    """All estimates from per-layer per-sample gradients [n, P_l] or their moments (n >= 2).

    The GSNR values use every parameter; their bootstrap resamples a seeded subset of at most SUBSET
    parameters per layer (all of them in small layers), scaled to the value (see _scaled).
    """
    layers = {
        name: x if isinstance(x, LayerSamples) else LayerSamples.from_matrix(x, seed) for name, x in per_layer.items()
    }
    n = next(iter(layers.values())).gram.shape[0]
    weights = resample_weights(n, resamples, seed)
    measure = NoiseMeasure(batch_size=n)
    gram = torch.zeros(n, n, dtype=torch.float64)
    total = torch.zeros(weights.shape[0], dtype=torch.float64)
    count = torch.zeros_like(total)
    full_total = full_count = 0.0
    for name, layer in layers.items():
        gram += layer.gram
        stats = gram_statistics(layer.gram, weights[:1])
        measure.layer_grad_sq[name] = float(stats["grad_sq"][0])
        measure.layer_trace[name] = float(stats["trace"][0])
        value_total, value_count = gsnr_moments(layer.col_sum, layer.col_sq, n)
        layer_total, layer_count = gsnr_sums(layer.subset, weights)
        share = layer.size / max(1, layer.subset.shape[1])  # the subset stands for the whole layer
        total += share * layer_total
        count += share * layer_count
        full_total += value_total
        full_count += value_count
        if value_count > 0:
            measure.layer_gsnr[name] = _scaled(_ratio(layer_total, layer_count), value_total / value_count)
    stats = gram_statistics(gram, weights)
    measure.grad_sq, measure.trace = float(stats["grad_sq"][0]), float(stats["trace"][0])
    for key in ("gradient_noise_scale", "norm_test_ratio", "inner_product_test_ratio", "orthogonality_test_ratio"):
        measure.estimates[key] = _interval(stats[key])
    if full_count > 0:
        measure.estimates["gsnr"] = _scaled(_ratio(total, count), full_total / full_count)
    return measure
