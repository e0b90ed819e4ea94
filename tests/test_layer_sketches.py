"""The `full` analysis's per-layer gradient and weight quantile sketches against plain autograd and torch.quantile."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, analyze_module
from gradhealth.diagnostics.sketch import MAX_EXACT, QUANTILES, RANK_ERROR, sketch
from torch import nn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        model[2].bias[:4] = -50.0  # four dead units: their rows of the last layer's weight get exact zero gradients
    return model, torch.randn(24, 6), torch.randint(0, 3, (24,))


def test_full_reports_each_layers_quantiles_as_autograd_gives_them() -> None:
    model, x, y = _model()
    eager = copy.deepcopy(model)
    F.cross_entropy(eager(x), y).backward()
    report = analyze_module(model, "cross_entropy", x, y, AnalysisOptions(checks=("full",)))
    assert len(report.distributions) == 3
    levels = torch.tensor(QUANTILES, dtype=torch.float64)
    for (name, dist), layer in zip(report.distributions.items(), [eager[0], eager[2], eager[4]], strict=True):
        grads = torch.cat([layer.weight.grad.reshape(-1), layer.bias.grad.reshape(-1)]).double()
        weights = torch.cat([layer.weight.detach().reshape(-1), layer.bias.detach().reshape(-1)]).double()
        assert dist.steps == [0] and dist.quantiles == list(QUANTILES)
        assert dist.grad[0] == pytest.approx(torch.quantile(grads, levels).tolist(), rel=1e-5, abs=1e-9), name
        assert dist.weight[0] == pytest.approx(torch.quantile(weights, levels).tolist(), rel=1e-6), name
        assert dist.count == [grads.numel()] and dist.grad_zeros == [int((grads == 0).sum())]
    assert report.distributions[list(report.distributions)[2]].grad_zeros[0] >= 4 * 3  # the dead units' columns


def test_only_full_sketches() -> None:
    model, x, y = _model()
    for checks in (("standard",), ("curvature",), ("noise",)):
        assert analyze_module(model, "cross_entropy", x, y, AnalysisOptions(checks=checks)).distributions == {}


def test_a_large_layer_is_read_through_a_sample_within_the_rank_bound() -> None:
    torch.manual_seed(1)
    values = torch.randn(3 * MAX_EXACT) ** 3  # heavy tails
    out = sketch([values], torch.Generator().manual_seed(0))
    ordered = values.sort().values
    for level, q in zip(QUANTILES[1:-1], out[1 : len(QUANTILES) - 1].tolist(), strict=True):
        rank = torch.searchsorted(ordered, torch.tensor(q)).item() / values.numel()
        assert abs(rank - level) <= RANK_ERROR  # Dvoretzky-Kiefer-Wolfowitz at 1 - 1e-6
    assert out[0] == values.min() and out[len(QUANTILES) - 1] == values.max()  # the extremes are exact
    assert out[-1] == values.numel() and out[-3] == int((values == 0).sum()) and out[-2] == 0  # counts are exact
