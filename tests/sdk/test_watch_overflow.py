"""watch()'s layer norms stay finite for finite gradients too large to square in float32 (norms above ~1.8e19)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from gradhealth.sdk.watching import _stats, watch
from torch import nn

from .test_watch_support import recording_client

Combine = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
COMBINE: list[Combine] = [_stats._per_layer_l2, _stats._per_layer_l2_scaled]


def huge_grads() -> list[torch.Tensor]:
    """Three float32 gradients of finite elements whose norms (~1e25) square past float32's 3.4e38."""
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=gen) * scale for shape, scale in (((64, 8), 1e24), ((64,), 3e23), ((8,), 1.0))]


@pytest.mark.parametrize("combine", COMBINE, ids=lambda f: f.__name__)
def test_layer_norm_of_finite_huge_gradients_is_finite_and_exact(combine: Combine) -> None:
    grads = huge_grads()
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads]).float()
    assert torch.isfinite(norms).all() and float(norms.max()) > 1e24
    index = torch.tensor([0, 0, 1])  # layer 0 owns the two huge tensors, layer 1 the small one
    out = combine(norms, index, 3)  # layer 2 owns none
    expected = [
        torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in gs])).item() for gs in (grads[:2], grads[2:])
    ]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out[0].item() == pytest.approx(expected[0], rel=1e-6) and out[0].item() > 1e25
    assert out[1].item() == pytest.approx(expected[1], rel=1e-6)
    assert out[2].item() == 0.0


@pytest.mark.parametrize("combine", COMBINE, ids=lambda f: f.__name__)
def test_a_non_finite_parameter_norm_still_makes_its_layer_inf(combine: Combine) -> None:
    norms = torch.tensor([1.0, math.nan, 2.0, math.inf, 3.0, 4.0])
    out = combine(norms, torch.tensor([0, 0, 1, 1, 2, 2]), 3)
    assert out[:2].tolist() == [math.inf, math.inf] and out[2].item() == pytest.approx(5.0)


def test_watch_logs_a_huge_finite_gradient_as_finite() -> None:
    """Through watch(): a loss scaled by 1e22 gives finite gradients of norm >1e22; none is reported non-finite."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    client = recording_client()
    gen = torch.Generator().manual_seed(1)
    expected = []
    with watch(model, opt, run="t", client=client, budget=None) as handle:
        for _ in range(3):
            x = torch.randn(32, 8, generator=gen)
            (F.mse_loss(model(x), x[:, :1]) * 1e22).backward()
            expected.append(
                [
                    torch.linalg.vector_norm(torch.cat([p.grad.double().flatten() for p in m.parameters()])).item()
                    for m in (model[0], model[2])
                ]
            )
            opt.step()
            opt.zero_grad()
            handle.log(loss=1.0)
    rows = [row for _, row in sorted(client.runs.steps().items())]
    assert len(rows) == 3
    for row, want in zip(rows, expected, strict=True):
        assert row["nonfinite"].tolist() == [0.0, 0.0]
        assert max(want) > 1.8e19  # past what float32 squares hold
        assert row["grad_norm"].tolist() == pytest.approx(want, rel=1e-6)
