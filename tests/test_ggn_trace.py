"""The GGN trace against dense Hessians: exact on piecewise-linear networks, its interval covers, and it knows its limits."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, engine
from gradhealth.diagnostics.engine import Analyzer
from gradhealth.diagnostics.export import PackageMetadata, export_per_sample_loss
from gradhealth.diagnostics.ggn_trace import METHOD, ggn_trace
from gradhealth.diagnostics.loading import from_exported_program
from torch import Tensor, nn

from .dense_hessian import flat_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Case = Callable[[], tuple[nn.Module, Tensor, Tensor]]


def _mlp() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))
    return model, torch.randn(16, 5), torch.randint(0, 3, (16,))


def _cnn() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    return model, torch.randn(12, 2, 6, 6), torch.randint(0, 3, (12,))


def _mlp_ignored_targets() -> tuple[nn.Module, Tensor, Tensor]:
    model, x, y = _mlp()
    y[::4] = -100  # cross_entropy's ignore_index: a zero loss, so a zero Hessian, but still in the mean's 1/n
    return model, x, y


PIECEWISE_LINEAR: dict[str, Case] = {"mlp": _mlp, "cnn": _cnn, "mlp_ignored_targets": _mlp_ignored_targets}


def dense_trace(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """tr of the dense Hessian of the per-sample cross-entropy's mean over all n samples, as analysed (float64)."""
    m = copy.deepcopy(model).double()
    flat, f = flat_loss(m, lambda fn: F.cross_entropy(fn(x.double()), y, reduction="none").mean())
    return float(torch.autograd.functional.hessian(f, flat).trace())


def exact_ggn_trace(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """(1/n) sum_i sum_c p_ic |grad CE(f_i, c)|^2: the GGN's trace by a per-sample, per-class loop (float64)."""
    m = copy.deepcopy(model).double()
    params = list(m.parameters())
    total = 0.0
    for i in range(x.shape[0]):
        if int(y[i]) == -100:
            continue
        logits = m(x[i : i + 1].double())
        p = torch.softmax(logits.detach(), dim=1)[0]
        for c in range(logits.shape[1]):
            grads = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([c])), params, retain_graph=True)
            total += float(p[c]) * sum(float((g**2).sum()) for g in grads)
    return total / x.shape[0]


def analyzer(model: nn.Module, x: Tensor, y: Tensor) -> Analyzer:
    ep = export_per_sample_loss(model, "cross_entropy", (x,), y)
    meta = PackageMetadata(returns_loss=True, num_inputs=1, loss="cross_entropy")
    return Analyzer(from_exported_program(ep, meta, None))


@pytest.mark.parametrize("name", list(PIECEWISE_LINEAR))
def test_on_a_piecewise_linear_network_the_hessian_trace_is_the_ggn_trace(name: str) -> None:
    model, x, y = PIECEWISE_LINEAR[name]()
    assert exact_ggn_trace(model, x, y) == pytest.approx(dense_trace(model, x, y), rel=1e-6)


@pytest.mark.parametrize("name", list(PIECEWISE_LINEAR))
def test_the_interval_covers_the_dense_trace_in_95_percent_of_seeds(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, y = PIECEWISE_LINEAR[name]()
    truth = dense_trace(model, x, y)
    run = analyzer(model, x, y)
    covered = 0
    for seed in range(40):
        monkeypatch.setattr(engine, "ggn_trace", functools.partial(ggn_trace, seed=seed))
        trace = run.run((x,), y, AnalysisOptions(checks=("curvature",))).estimates["hessian_trace"]
        assert trace.method == METHOD and trace.samples == x.shape[0]
        assert trace.low is not None and trace.high is not None
        covered += trace.low <= truth <= trace.high
    print(f"{name}: {covered} of 40 seeded intervals cover the dense trace")
    assert covered >= 36, covered


def test_the_full_check_uses_it_with_the_same_graph_as_lambda_max() -> None:
    model, x, y = _cnn()
    report = analyzer(model, x, y).run((x,), y, AnalysisOptions(checks=("full",)))
    trace = report.estimates["hessian_trace"]
    assert trace.method == METHOD and trace.low is not None and trace.high is not None
    assert abs(trace.value - dense_trace(model, x, y)) <= 1.5 * (trace.high - trace.low)  # one seeded draw
    assert "hessian_max_eigenvalue" in report.estimates and "gsnr" in report.estimates


class TwiceUsed(nn.Module):
    """One Linear applied twice in series: the logits are quadratic in its weight."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.mid(torch.relu(self.mid(torch.relu(self.inp(x)))))))


def _tanh() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)), torch.randn(16, 5), torch.randint(0, 3, (16,))


def _batch_norm() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3))
    return model, torch.randn(16, 5), torch.randint(0, 3, (16,))


def _twice() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(4)
    return TwiceUsed(), torch.randn(16, 5), torch.randint(0, 3, (16,))


@pytest.mark.parametrize("build", [_tanh, _batch_norm, _twice], ids=["tanh", "batch_norm", "weight_used_twice"])
def test_where_the_identity_fails_the_trace_is_hutchpp_and_the_ggn_would_be_wrong(build: Case) -> None:
    model, x, y = build()
    trace = analyzer(model, x, y).run((x,), y, AnalysisOptions(checks=("curvature",))).estimates["hessian_trace"]
    assert trace.method.startswith("hutch")
    if build is not _batch_norm:  # batch norm mixes samples: the per-sample GGN is another quantity there
        assert exact_ggn_trace(model, x, y) != pytest.approx(dense_trace(model, x, y), rel=1e-3)


class BatchSecond(nn.Module):
    """A Linear applied to [1, n, F] (one token, batch second): piecewise linear, but its rows are not the samples."""

    def __init__(self) -> None:
        super().__init__()
        self.mix, self.out = nn.Linear(12, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.relu(self.mix(x.unsqueeze(0)))  # [1, n, 6]: one row, which would broadcast over the n samples
        return self.out(hidden.squeeze(0))


def test_a_layer_whose_rows_are_not_the_samples_gets_hutchpp() -> None:
    torch.manual_seed(5)
    model, x, y = BatchSecond(), torch.randn(16, 12), torch.randint(0, 3, (16,))
    trace = analyzer(model, x, y).run((x,), y, AnalysisOptions(checks=("curvature",))).estimates["hessian_trace"]
    assert trace.method.startswith("hutch")
    assert exact_ggn_trace(model, x, y) == pytest.approx(dense_trace(model, x, y), rel=1e-6)  # the identity holds
