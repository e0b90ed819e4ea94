"""unscaled_targets: raw regression targets are named as the root cause of the size symptoms they produce."""

from __future__ import annotations

from functools import cache

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, analyze_module
from gradhealth.diagnostics.rules.common import label_span, layer_label
from gradhealth.report import Report, to_html, to_markdown
from torch import Tensor, nn

from .zoo import by_name

SGD = {"name": "sgd", "lr": 0.01, "momentum": 0.0}


@cache
def _raw() -> Report:
    model, loss, inputs, y = by_name("mlp_regression_raw_targets").build()
    return analyze_module(model, loss, inputs, y, AnalysisOptions(optimizer=SGD))


def _rules(model: nn.Module, loss: object, x: Tensor, y: Tensor) -> set[str]:
    report = analyze_module(model, loss, (x,), y, AnalysisOptions(optimizer=SGD))  # type: ignore[arg-type]
    return {f.rule for f in report.findings}


def test_fires_with_target_and_output_scale_checked_by_autograd() -> None:
    model, _, inputs, y = by_name("mlp_regression_raw_targets").build()
    with torch.no_grad():
        output_rms = float(model(*inputs).pow(2).mean().sqrt())
    (finding,) = _raw().findings_for("unscaled_targets")
    assert finding.severity == "error"
    assert finding.evidence["loss_kind"] == "mse"
    assert finding.evidence["target_mean"] == pytest.approx(float(y.mean()), rel=1e-5)
    assert finding.evidence["target_std"] == pytest.approx(float(y.std()), rel=1e-5)
    assert finding.evidence["output_rms"] == pytest.approx(output_rms, rel=1e-4)
    fix = finding.remediation[0]
    assert fix.action == "standardize_targets" and fix.snippet and "sigma + mu" in fix.snippet


def test_symptoms_point_at_the_root_cause() -> None:
    report = _raw()
    (update,) = report.findings_for("update_ratio")
    assert update.caused_by == ["unscaled_targets"]
    assert "unscaled_targets" in update.message
    assert not report.findings_for("unscaled_targets")[0].caused_by
    assert "Caused by: `unscaled_targets`" in to_markdown(report)
    assert "Caused by: <code>unscaled_targets</code>" in to_html(report)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def _targets(scale: float, shift: float) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=gen)
    return x, shift + scale * (x[:, :1] + 0.1 * torch.randn(32, 1, generator=gen))


def _huber_sum(out: Tensor, y: Tensor) -> Tensor:
    return F.smooth_l1_loss(out, y, reduction="none").sum(dim=1)


@pytest.mark.parametrize("loss", ["mse", "l1", "smooth_l1", _huber_sum], ids=["mse", "l1", "smooth_l1", "custom"])
def test_every_regression_loss_kind_is_read_from_the_graph(loss: object) -> None:
    x, y = _targets(2000.0, 5000.0)
    assert "unscaled_targets" in _rules(_mlp(), loss, x, y)


def test_silent_on_standardised_targets() -> None:
    x, y = _targets(2000.0, 5000.0)
    assert "unscaled_targets" not in _rules(_mlp(), "mse", x, (y - y.mean()) / y.std())


def test_silent_when_the_outputs_already_reach_the_targets() -> None:
    model = _mlp()
    x, _ = _targets(1.0, 0.0)
    with torch.no_grad():
        model[2].bias.fill_(5000.0)  # a fitted model in raw units: the residual is small, nothing is inflated
        y = model(x) + 0.1 * torch.randn(32, 1)
    assert "unscaled_targets" not in _rules(model, "mse", x, y)


def test_silent_on_classification() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))
    x = torch.randn(32, 8)
    assert "unscaled_targets" not in _rules(model, "cross_entropy", x, torch.randint(0, 5, (32,)))


def test_layer_label_quotes_bare_indices_and_adds_the_type() -> None:
    assert layer_label("20", "Linear") == "layer '20' (Linear)"
    assert layer_label("net.20", "Linear") == "net.20 (Linear)"
    assert layer_label("encoder.layers.3.mlp.fc1") == "encoder.layers.3.mlp.fc1"
    assert layer_label("0.2") == "layer '0.2'"
    assert layer_label("") == "(model)"
    assert label_span(["0", "2", "4"]) == "layer '0' … layer '4' (3 layers)"


def test_plain_export_with_a_named_loss() -> None:
    """A plain exported model plus loss='mse' in the request: the prediction is the graph's output."""
    from gradhealth.diagnostics.engine import Analyzer
    from gradhealth.diagnostics.loading import from_exported_program

    model = _mlp()
    x, y = _targets(2000.0, 5000.0)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=2)},))
    report = Analyzer(from_exported_program(program, None, "mse")).run((x,), y, AnalysisOptions())
    (finding,) = report.findings_for("unscaled_targets")
    with torch.no_grad():
        assert finding.evidence["output_rms"] == pytest.approx(float(model(x).pow(2).mean().sqrt()), rel=1e-4)
