"""Each machine-applicable remedy against the plain-torch computation it stands for (docs/verify.md)."""

from __future__ import annotations

import math

import pytest
import torch
from gradhealth.diagnostics.remedies import REMEDIES, RemedyError, TrialSetup, apply_remedy
from torch import nn


def _setup(model: nn.Module, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> TrialSetup:
    params = dict(model.named_parameters())
    x = torch.randn(8, 4) if x is None else x
    y = torch.randn(8) if y is None else y
    return TrialSetup(params, (x,), y, lr=0.1, trainable=set(params))


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 300), nn.ReLU(), nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 1))


def test_lr_is_replaced_or_scaled() -> None:
    s = _setup(_mlp())
    apply_remedy("lower_lr", {"lr": 0.004}, s)
    assert s.lr == 0.004
    apply_remedy("scale_lr", {"factor": 0.5}, s)
    assert s.lr == pytest.approx(0.002)


def test_clip_and_loss_scale_and_unfreeze() -> None:
    model = _mlp()
    model[0].weight.requires_grad_(False)
    s = _setup(model)
    s.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    apply_remedy("clip_gradients", {"max_norm": 1.5}, s)
    apply_remedy("use_loss_scaling", {"loss_scale": 1024.0}, s)
    apply_remedy("unfreeze", {"parameters": ["0.*"]}, s)
    assert (s.max_norm, s.norm_type, s.loss_scale) == (1.5, 2.0, 1024.0)
    assert {"0.weight", "0.bias"} <= s.trainable


@pytest.mark.parametrize(
    ("scheme", "nonlinearity", "expected_std"),
    [
        ("kaiming_normal", "relu", math.sqrt(2 / 300)),
        ("kaiming_uniform", "relu", math.sqrt(2 / 300)),  # uniform bound g*sqrt(3/fan_in): the same std
        ("xavier_normal", "tanh", 5 / 3 * math.sqrt(2 / 500)),
        ("orthogonal", "linear", math.sqrt(1 / 300)),  # a 200x300 orthogonal matrix: rows of norm 1
    ],
)
def test_reinitialize_draws_the_scheme_std(scheme: str, nonlinearity: str, expected_std: float) -> None:
    model = _mlp()
    with torch.no_grad():
        model[2].weight.mul_(50)
    s = _setup(model)
    apply_remedy("reinitialize", {"layers": ["2"], "scheme": scheme, "nonlinearity": nonlinearity, "bias": 0.0}, s)
    weight = model[2].weight.detach()
    assert float(weight.std()) == pytest.approx(expected_std, rel=0.05)
    assert float(model[2].bias.detach().abs().max()) == 0.0
    if scheme == "orthogonal":
        torch.testing.assert_close(weight @ weight.T, torch.eye(200), atol=1e-4, rtol=0)
    assert float(model[0].weight.detach().std()) == pytest.approx(
        float(_mlp()[0].weight.detach().std())
    )  # other layers untouched


def test_explicit_gain_and_patterns() -> None:
    model = _mlp()
    s = _setup(model)
    apply_remedy("fix_initialization", {"layers": ["*"], "scheme": "kaiming_normal", "gain": 1.0}, s)
    assert float(model[2].weight.detach().std()) == pytest.approx(1 / math.sqrt(300), rel=0.05)
    assert float(model[4].weight.detach().std()) == pytest.approx(1 / math.sqrt(200), rel=0.1)


def test_rescale_and_bias() -> None:
    model = _mlp()
    before = model[0].weight.detach().clone()
    s = _setup(model)
    apply_remedy("rescale_weights", {"layers": ["0"], "factor": 0.25}, s)
    torch.testing.assert_close(model[0].weight.detach(), before * 0.25)
    apply_remedy("fix_bias_and_init", {"layers": ["0", "2"], "bias": 0.1}, s)
    assert torch.all(model[0].bias == 0.1) and torch.all(model[2].bias == 0.1)
    torch.testing.assert_close(model[0].weight.detach(), before * 0.25)  # no scheme: weights kept


def test_forget_gate_bias_matches_jozefowicz() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5, num_layers=2)
    model = nn.Sequential(lstm)
    s = _setup(model)
    apply_remedy("set_forget_gate_bias", {"layers": ["0"], "value": 1.0}, s)
    for layer in range(2):
        b_ih, b_hh = getattr(lstm, f"bias_ih_l{layer}"), getattr(lstm, f"bias_hh_l{layer}")
        torch.testing.assert_close((b_ih + b_hh)[5:10].detach(), torch.ones(5))  # gates i, f, g, o: f second
    assert float(lstm.bias_ih_l0.detach()[:5].abs().sum()) > 0  # the other gates untouched


def test_standardize_per_feature() -> None:
    x = torch.randn(16, 3) * torch.tensor([1.0, 100.0, 1e4]) + torch.tensor([0.0, 50.0, -3e3])
    y = torch.randn(16, 2) * 40 + 7
    s = _setup(_mlp(), x, y)
    mean, std = x.mean(0).tolist(), x.std(0).tolist()
    apply_remedy("standardize_inputs", {"mean": mean, "std": std}, s)
    torch.testing.assert_close(s.inputs[0], (x - x.mean(0)) / x.std(0))
    apply_remedy("standardize_targets", {"mean": y.mean(0).tolist(), "std": y.std(0).tolist()}, s)
    torch.testing.assert_close(s.targets, (y - y.mean(0)) / y.std(0))
    assert s.loss_units_changed and s.data_changed


def test_standardize_image_channels() -> None:
    x = torch.rand(4, 3, 8, 8) * 255
    s = _setup(_mlp(), x)
    apply_remedy("standardize_inputs", {"mean": [10.0, 20.0, 30.0], "std": [2.0, 4.0, 5.0]}, s)
    expected = (x - torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)) / torch.tensor([2.0, 4.0, 5.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(s.inputs[0], expected)


@pytest.mark.parametrize(
    ("action", "params", "message"),
    [
        ("lower_lr", {"lr": -0.1}, "params.lr must be > 0"),
        ("lower_lr", {}, "params.lr (the new lr) or params.factor"),
        ("scale_lr", {"lr": float("nan")}, "must be finite"),
        ("clip_gradients", {"max_norm": "big"}, "must be a number"),
        (
            "reinitialize",
            {"layers": ["encoder.nope"], "scheme": "kaiming_normal"},
            "'encoder.nope' is not in the model",
        ),
        ("reinitialize", {"layers": ["0"], "scheme": "lecun"}, "params.scheme must be one of"),
        ("reinitialize", {"layers": ["0"], "scheme": "orthogonal", "nonlinearity": "swish"}, "params.nonlinearity"),
        ("rescale_weights", {"layers": [], "factor": 2.0}, "non-empty list of names"),
        ("standardize_inputs", {"mean": [0.0, 1.0], "std": [1.0, 1.0]}, "input 0 has 4 features along dim 1"),
        ("standardize_inputs", {"mean": [0.0], "std": [0.0]}, "params.std[0] must be > 0"),
        ("standardize_inputs", {"mean": [0.0], "std": [1.0], "input": 3}, "names no input"),
        ("use_loss_scaling", {"loss_scale": 0.5}, "must be >= 1.0"),
        ("unfreeze", {"parameters": ["ghost.weight"]}, "'ghost.weight' is not in the model"),
        ("set_forget_gate_bias", {"layers": ["0"]}, "no LSTM biases"),
        ("add_normalization", {}, "not machine-applicable"),
    ],
)
def test_bad_params_are_refused_with_a_reason(action: str, params: dict, message: str) -> None:
    with pytest.raises(RemedyError) as err:
        apply_remedy(action, params, _setup(_mlp()))
    assert message in str(err.value)


def test_registry_matches_the_documented_contract() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "verify.md").read_text()
    for action in REMEDIES:
        assert f"`{action}`" in doc


def test_reinitialize_centres_biases_on_the_input_mean() -> None:
    """input_mean m: bias = -m x each unit's weight sum, so inputs of mean m give zero-mean pre-activations."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.Sigmoid(), nn.Linear(64, 64), nn.Sigmoid(), nn.Conv1d(64, 8, 3))
    params = {"layers": ["2", "4"], "scheme": "kaiming_normal", "gain": 4.0, "bias": 0.0, "input_mean": 0.5}
    apply_remedy("reinitialize", params, _setup(model))
    linear, conv = model[2], model[4]
    torch.testing.assert_close(linear.bias.detach(), -0.5 * linear.weight.detach().sum(dim=1))
    torch.testing.assert_close(conv.bias.detach(), -0.5 * conv.weight.detach().sum(dim=(1, 2)))
    with torch.no_grad():  # sigmoid-like inputs (mean 1/2): the centred layer's pre-activations average ~0
        pre = linear(torch.rand(4096, 64))
    assert float(pre.mean(dim=0).abs().max()) < 0.1 * float(pre.std())  # every unit, not only on average
    assert torch.all(model[0].bias != 0)  # layer 0 was not named: untouched


def test_a_fix_carrying_max_norm_also_clips() -> None:
    s = _setup(_mlp())
    apply_remedy("rescale_weights", {"layers": ["0"], "factor": 0.5, "max_norm": 0.7}, s)
    assert s.max_norm == 0.7 and s.norm_type == 2.0
    plain = _setup(_mlp())
    apply_remedy("rescale_weights", {"layers": ["0"], "factor": 0.5}, plain)
    assert plain.max_norm is None
