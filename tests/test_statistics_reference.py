"""Every statistic the engine reports agrees with an independent plain-autograd computation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, analyze_module
from gradhealth.diagnostics.curvature import lanczos_top_eigenvalue
from gradhealth.diagnostics.hvp import hessian_operator

RTOL = 1e-4


class Block(nn.Module):
    """A functional activation inside a module: must be found in the graph, not by module type."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), Block(16), nn.Linear(16, 16), nn.Sigmoid(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].bias[:6].sub_(5.0)  # some dead units, so the dead fraction is not trivially 0
        model[3].weight.mul_(4.0)  # some saturation
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(24, 12), torch.randint(0, 4, (24,))


def _eager_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):  # type: ignore[no-untyped-def]
    """Plain autograd: forward hooks keep each module's output and its gradient."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):  # type: ignore[no-untyped-def]
        def hook(_m, _i, out):  # type: ignore[no-untyped-def]
            out.retain_grad()
            outputs[name] = out

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in model.named_modules() if n]
    loss = F.cross_entropy(model(x), y, reduction="none").mean()
    loss.backward()
    for h in handles:
        h.remove()
    return loss, outputs


@pytest.fixture(scope="module")
def reference():  # type: ignore[no-untyped-def]
    model, (x, y) = _model(), _batch()
    eager = copy.deepcopy(model)
    loss, outputs = _eager_step(eager, x, y)
    report = analyze_module(model, "cross_entropy", x, y, AnalysisOptions(optimizer={"name": "sgd", "lr": 0.05}))
    return report, eager, loss, outputs


def _layer(report, name):  # type: ignore[no-untyped-def]
    return next(layer for layer in report.layers if layer.name == name)


def test_loss_and_global_norm(reference) -> None:  # type: ignore[no-untyped-def]
    report, eager, loss, _ = reference
    assert report.metrics["loss"] == pytest.approx(float(loss.detach()), rel=RTOL)
    expected = math.sqrt(sum(float(p.grad.square().sum()) for p in eager.parameters()))
    assert report.metrics["global_grad_norm"] == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("name,module", [("0", "0"), ("2.fc", "2.fc"), ("3", "3"), ("5", "5")])
def test_parameter_statistics(reference, name: str, module: str) -> None:  # type: ignore[no-untyped-def]
    report, eager, _, outputs = reference
    layer = _layer(report, name)
    mod = dict(eager.named_modules())[module]
    grads = torch.cat([p.grad.flatten() for p in mod.parameters()])
    weights = torch.cat([p.detach().flatten() for p in mod.parameters()])
    assert layer.grad_norm == pytest.approx(float(grads.norm()), rel=RTOL)
    assert layer.weight_norm == pytest.approx(float(weights.norm()), rel=RTOL)
    assert layer.grad_rms == pytest.approx(float(grads.square().mean().sqrt()), rel=RTOL)
    assert layer.weight_rms == pytest.approx(float(weights.square().mean().sqrt()), rel=RTOL)
    assert layer.grad_to_weight == pytest.approx(float(grads.norm() / weights.norm()), rel=RTOL)
    out = outputs[module]
    assert layer.output_rms == pytest.approx(float(out.detach().square().mean().sqrt()), rel=RTOL)
    assert layer.output_grad_rms == pytest.approx(float(out.grad.square().mean().sqrt()), rel=RTOL)


def test_update_ratio_matches_a_real_sgd_step(reference) -> None:  # type: ignore[no-untyped-def]
    report, eager, _, _ = reference
    before = {n: p.detach().clone() for n, p in eager.named_parameters()}
    torch.optim.SGD(eager.parameters(), lr=0.05).step()
    mod = dict(eager.named_modules())["3"]
    delta = torch.cat([(p.detach() - before[f"3.{n}"]).flatten() for n, p in mod.named_parameters()])
    weight = torch.cat([before[f"3.{n}"].flatten() for n, _ in mod.named_parameters()])
    assert _layer(report, "3").update_to_weight == pytest.approx(float(delta.norm() / weight.norm()), rel=1e-3)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_update_ratio_matches_a_real_adam_step(name: str) -> None:
    model, (x, y) = _model(), _batch()
    eager = copy.deepcopy(model)
    _eager_step(eager, x, y)
    before = {n: p.detach().clone() for n, p in eager.named_parameters()}
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    cls(eager.parameters(), lr=1e-3, weight_decay=0.01).step()
    report = analyze_module(
        model, "cross_entropy", x, y, AnalysisOptions(optimizer={"name": name, "lr": 1e-3, "weight_decay": 0.01})
    )
    for module in ("0", "3", "5"):
        delta = torch.cat(
            [
                (p.detach() - before[f"{module}.{n}"]).flatten()
                for n, p in dict(eager.named_modules())[module].named_parameters()
            ]
        )
        weight = torch.cat(
            [before[f"{module}.{n}"].flatten() for n, _ in dict(eager.named_modules())[module].named_parameters()]
        )
        assert _layer(report, module).update_to_weight == pytest.approx(float(delta.norm() / weight.norm()), rel=1e-3)


def test_activation_statistics(reference) -> None:  # type: ignore[no-untyped-def]
    report, eager, _, outputs = reference
    relu = outputs["1"].detach()
    dead = 1.0 - float((relu > 0).any(dim=0).float().mean())
    assert _layer(report, "1").activation.dead_fraction == pytest.approx(dead, abs=1e-6)
    assert _layer(report, "1").activation.mean == pytest.approx(float(relu.mean()), rel=RTOL)
    tanh = outputs["2"].detach()  # the functional tanh inside Block is the block's output
    block = next(layer for layer in report.layers if layer.activation and layer.activation.kind == "tanh")
    assert block.name == "2"
    assert block.activation.saturated_fraction == pytest.approx(
        float((1 - tanh.square() < 0.01).float().mean()), abs=1e-6
    )
    sig = outputs["4"].detach()
    assert _layer(report, "4").activation.saturated_fraction == pytest.approx(
        float((sig * (1 - sig) < 0.0025).float().mean()), abs=1e-6
    )
    assert 0 < dead < 1  # the model was built so these numbers are not trivial


def test_fp16_underflow_fraction_counts_tiny_gradients() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    x, y = torch.randn(16, 8) * 1e-7, torch.randn(16, 2) * 1e-3
    eager = copy.deepcopy(model)
    F.mse_loss(eager(x), y, reduction="none").mean(1).mean().backward()
    g = eager[0].weight.grad.abs()
    expected = float(((g > 0) & (g < 2**-24)).sum()) / (eager[0].weight.numel() + eager[0].bias.numel())
    report = analyze_module(model, "mse", x, y)
    assert _layer(report, "0").fp16_underflow_fraction == pytest.approx(expected, abs=1e-6)
    assert expected > 0.2


def test_lanczos_matches_dense_hessian() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    params = dict(model.named_parameters())
    names = list(params)
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().flatten() for n in names])

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        chunks, offset = {}, 0
        for n, s in zip(names, shapes, strict=True):
            chunks[n] = vector[offset : offset + s.numel()].view(s)
            offset += s.numel()
        return F.cross_entropy(torch.func.functional_call(model, chunks, (x,)), y)

    dense = torch.autograd.functional.hessian(loss_of, flat)
    expected = float(torch.linalg.eigvalsh(dense)[-1])  # top algebraic, not largest magnitude
    op = hessian_operator(F.cross_entropy(model(x), y), list(model.parameters()))
    assert op is not None
    estimate = lanczos_top_eigenvalue(op, op.dim, op.gradient, max_steps=op.dim, rel_tol=1e-7).eigenvalue
    assert estimate == pytest.approx(expected, rel=1e-3)
    report = analyze_module(
        model, "cross_entropy", x, y, AnalysisOptions(checks=("standard", "curvature"), curvature_iterations=300)
    )
    assert report.metrics["hessian_max_eigenvalue"] == pytest.approx(expected, rel=1e-2)


def test_gradient_through_time_matches_input_gradient() -> None:
    torch.manual_seed(0)

    class Last(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    model = Last()
    x, y = torch.randn(6, 20, 3), torch.randint(0, 2, (6,))
    leaf = x.clone().requires_grad_(True)
    F.cross_entropy(copy.deepcopy(model)(leaf), y, reduction="none").mean().backward()
    expected = leaf.grad.transpose(0, 1).reshape(20, -1).norm(dim=1)
    from gradhealth.diagnostics import Analyzer
    from gradhealth.diagnostics.export import PackageMetadata, export_per_sample_loss
    from gradhealth.diagnostics.loading import from_exported_program

    loaded = from_exported_program(
        export_per_sample_loss(model, "cross_entropy", x, y), PackageMetadata(True, 1, "ce"), None
    )
    analyzer = Analyzer(loaded)
    analyzer.run((x,), y, AnalysisOptions())
    measured = analyzer.graph.recorder.results.backward
    per_step = next(v["per_step_norm"] for v in measured.values() if "per_step_norm" in v)
    torch.testing.assert_close(per_step, expected, rtol=1e-4, atol=1e-8)


def test_nonfinite_origin_names_the_layer_and_op() -> None:
    class LogLayer(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(x)  # negative inputs give NaN

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), LogLayer(), nn.Linear(4, 2))
    report = analyze_module(model, "cross_entropy", torch.randn(8, 4), torch.randint(0, 2, (8,)))
    finding = report.findings_for("non_finite")[0]
    assert finding.severity == "critical" and report.health == "critical"
    assert finding.layers == ["1"]
    assert "log" in finding.evidence["op"]
