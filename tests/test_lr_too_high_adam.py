"""lr_too_high under Adam: the preconditioned-sharpness limit (Cohen et al. 2022) against real Adam runs.

The critical lr comes from a dense float64 Hessian preconditioned as Adam's first step does
(P = |g| + eps), independent of the engine's Lanczos. Each model is trained with torch.optim.Adam at
fixed multiples of that lr: below it the loss never rises above its start, above it the loss climbs over
its start (past twice the start at 4x), and the rule must agree with the run on both sides.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, OptimizerSpec, analyze_module
from gradhealth.diagnostics.curvature import adam_stability_limit
from torch import Tensor, nn

from .dense_hessian import flat_loss

Case = tuple[nn.Module, str, Tensor, Tensor]
LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}
pytestmark = pytest.mark.usefixtures("one_torch_thread")
BELOW, ABOVE = (0.3, 0.5), (1.5, 4.0)  # multiples of the critical lr (2+2 beta1)/((1-beta1) lambda)


def _tanh_regressor() -> Case:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)), "mse", x, torch.sin(x @ torch.randn(8, 1))


def _relu_classifier() -> Case:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, "cross_entropy", torch.randn(64, 10), torch.randint(0, 3, (64,))


def _gelu_regressor() -> Case:
    torch.manual_seed(2)
    x = torch.randn(64, 6)
    return nn.Sequential(nn.Linear(6, 24), nn.GELU(), nn.Linear(24, 2)), "mse", x, 3 * x[:, :2]


CASES = {"tanh_regressor": _tanh_regressor, "relu_classifier": _relu_classifier, "gelu_regressor": _gelu_regressor}


def preconditioned_sharpness(case: Case, eps: float = 1e-8) -> float:
    """Top eigenvalue of P^-1/2 H P^-1/2 from the dense float64 Hessian, P = |g| + eps."""
    model, loss, x, y = case
    model = copy.deepcopy(model).double()
    x = x.double()
    y = y.double() if y.is_floating_point() else y
    flat, f = flat_loss(model, lambda forward: LOSSES[loss](forward(x), y))
    gradient = torch.autograd.functional.jacobian(f, flat)
    scale = (gradient.abs() + eps).rsqrt()
    hessian = torch.autograd.functional.hessian(f, flat)
    return float(torch.linalg.eigvalsh(scale[:, None] * hessian * scale[None, :])[-1])


def adam_losses(case: Case, lr: float, steps: int = 50) -> list[float]:
    model, loss, x, y = case
    model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        value = LOSSES[loss](model(x), y)
        losses.append(value.item())
        value.backward()
        optimizer.step()
    return losses


_CRITICAL: dict[str, float] = {}


def critical_lr(name: str) -> float:
    if name not in _CRITICAL:
        _CRITICAL[name] = adam_stability_limit(1.0, 0.9) / preconditioned_sharpness(CASES[name]())
    return _CRITICAL[name]


@pytest.mark.parametrize("factor", BELOW + ABOVE)
@pytest.mark.parametrize("name", list(CASES))
def test_rule_agrees_with_a_real_adam_run(name: str, factor: float) -> None:
    lr = factor * critical_lr(name)
    case = CASES[name]()
    losses = adam_losses(case, lr)
    model, loss, x, y = case
    report = analyze_module(
        model,
        loss,
        x,
        y,
        AnalysisOptions(checks=("standard", "curvature"), optimizer=OptimizerSpec(name="adam", lr=lr)),
    )
    findings = report.findings_for("lr_too_high")
    pre = report.metrics["preconditioned_sharpness"]
    assert isinstance(pre, float) and pre == pytest.approx(adam_stability_limit(1.0, 0.9) / critical_lr(name), rel=1e-2)
    if factor < 1:
        assert max(losses[1:]) <= losses[0] and losses[-1] < 0.5 * losses[0], losses
        assert not findings
    else:
        assert max(losses[1:]) > (2 if factor > 2 else 1) * losses[0], losses  # the loss climbs over its start
        assert len(findings) == 1
        assert findings[0].severity == ("error" if factor > 2 else "warning")
        assert findings[0].remediation[0].params["lr"] < critical_lr(name)
