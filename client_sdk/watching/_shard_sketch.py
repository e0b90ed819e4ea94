"""Distributions under FSDP2: each rank summarises its local shards in KNOTS quantiles, rank 0 merges them.

No rank sees a whole parameter, and quantiles of shards do not combine into the whole tensor's. The
exact quantiles would need either every value on one rank (an all-gather of every parameter and
gradient: FSDP's whole unshard again) or a selection search (about 30 rounds of counting
collectives per quantile, each a synchronisation point). Instead each rank sends a fixed-size
summary of every layer, in the recorded step's one all_reduce (ShardedStats.finish), at the sketch
stride only: its local values' quantiles at KNOTS evenly spaced levels (0, 1/(KNOTS-1), ..., 1) and
its exact counts of zeros, non-finite values and all values. Rank 0 reads each rank's summary as
a piecewise-linear CDF through its knots, takes the mixture weighted by each rank's count of finite
values, and inverts it at the sketch's quantile levels (merge()).

Error: counts, the minimum and the maximum are exact (as in one process: a shard of more than
MAX_EXACT values is sampled the same way). An interior quantile q at level t satisfies, over all
N finite values, #{v < q}/N - d <= t <= #{v <= q}/N + d with d = 1/(KNOTS-1) + R/N for R ranks:
each rank's CDF is known to within one knot spacing, plus 1/n_r for linear interpolation
(docs/runs.md derives it; tests/sdk/test_watch_sharded_sketch.py checks it, uneven shards and ties).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._sketch import QUANTILES

KNOTS = 129  # rank error of a merged quantile <= 1/128 (+ R/N)
LEVELS = tuple(k / (KNOTS - 1) for k in range(KNOTS))
SUMMARY = KNOTS + 3  # the knots, then zeros, non-finite, count


def _cdf(knots: Tensor, at: Tensor, levels: Tensor, right: bool) -> Tensor:
    """The piecewise-linear CDF through (knots[b, j], levels[j]) at `at` (B, M): right-continuous, or its left limit."""
    K = knots.shape[-1]
    index = torch.searchsorted(knots, at, right=right)
    lo, hi = (index - 1).clamp(0, K - 1), index.clamp(0, K - 1)
    x0, x1 = knots.gather(1, lo), knots.gather(1, hi)
    span = torch.where(x1 > x0, x1 - x0, torch.ones_like(x1))
    inside = levels[lo] + (at - x0) / span * (levels[hi] - levels[lo])
    return torch.where(index == 0, 0.0, torch.where(index == K, 1.0, inside))


def merge(rows: Tensor) -> Tensor:
    """(R, B, SUMMARY) summaries of R ranks' shards of B tensors (float64) -> (B, WIDTH) sketches as one process's."""
    R, B, _ = rows.shape
    rows = rows.double()
    out = torch.full((B, len(QUANTILES) + 3), float("nan"), dtype=torch.float64)
    out[:, -3:] = rows[..., -3:].sum(0)
    finite = (rows[..., -1] - rows[..., -2]).clamp(min=0)  # (R, B)
    total = finite.sum(0)
    live = total > 0
    if not live.any():
        return out
    knots = rows[:, live, :KNOTS]  # (R, b, K)
    weights = finite[:, live] / total[live]
    top = torch.where(weights[..., None] > 0, knots, -torch.inf).amax(dim=(0, 2))  # (b,)
    knots = torch.where(weights[..., None] > 0, knots, top[None, :, None])  # an empty shard: weight 0, out of range
    knots = torch.cummax(knots, dim=-1).values  # monotone against rounding
    union = knots.permute(1, 0, 2).reshape(knots.shape[1], -1).sort(dim=-1).values  # (b, R K)
    levels = torch.tensor(LEVELS, dtype=torch.float64)
    left = sum(w[:, None] * _cdf(k, union, levels, right=False) for w, k in zip(weights, knots, strict=True))
    right = sum(w[:, None] * _cdf(k, union, levels, right=True) for w, k in zip(weights, knots, strict=True))
    # the mixture as a monotone polyline: at each union knot its left limit, then its value (a jump is vertical)
    xs = union.repeat_interleave(2, dim=1)
    ys = torch.stack([left, right], dim=-1).reshape(union.shape[0], -1)  # type: ignore[union-attr]
    ys = torch.cummax(ys, dim=-1).values
    targets = torch.tensor(QUANTILES[1:-1], dtype=torch.float64).expand(union.shape[0], -1).contiguous()
    index = torch.searchsorted(ys, targets).clamp(1, ys.shape[1] - 1)
    y0, y1 = ys.gather(1, index - 1), ys.gather(1, index)
    x0, x1 = xs.gather(1, index - 1), xs.gather(1, index)
    fraction = torch.where(y1 > y0, (targets - y0) / (y1 - y0), torch.ones_like(y1)).clamp(0, 1)
    inner = x0 + fraction * (x1 - x0)
    out[live, 0], out[live, len(QUANTILES) - 1] = union[:, 0], union[:, -1]
    out[live, 1 : len(QUANTILES) - 1] = inner
    return out
