"""Checkpoint advice is consistent, type-correct and machine-applicable (issue 14), checked against hand computations."""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, analyze_module
from gradhealth.diagnostics.report_builder import rank
from gradhealth.report import Finding, Remediation, Report
from torch import Tensor, nn

from . import zoo
from .test_zoo_rules import _report as zoo_report
from .zoo import PATHOLOGICAL, by_name

SGD_README = {"name": "sgd", "lr": 0.5, "momentum": 0.9}


def _analyze(name: str, **options: object) -> Report:
    case = by_name(name)
    model, loss, inputs, targets = case.build()
    opts = {"optimizer": case.optimizer, "precision": case.precision, "checks": case.checks, **options}
    return analyze_module(model, loss, inputs, targets, AnalysisOptions(**opts))  # type: ignore[arg-type]


def _report(name: str) -> Report:
    """The zoo report test_zoo_rules computes (same options): one analysis per case for the whole suite."""
    return zoo_report(name)


def _first(report: Report, rule: str) -> Finding:
    found = report.findings_for(rule)
    assert found, [f.rule for f in report.findings]
    return found[0]


def _all(report: Report) -> list[Remediation]:
    return [r for f in report.findings for r in f.remediation]


def _quickstart(lr: float) -> Report:
    """The README's quickstart model (10 Linear+Sigmoid) with its second command's optimizer and checks."""
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(10) for m in (nn.Linear(64, 64), nn.Sigmoid())], nn.Linear(64, 10))
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    options = AnalysisOptions(optimizer={**SGD_README, "lr": lr}, checks=["standard", "curvature"])  # type: ignore[arg-type]
    return analyze_module(model, "cross_entropy", (x,), y, options)


def _advised_lrs(report: Report) -> list[float]:
    return [float(r.params["lr"]) for r in _all(report) if r.params.get("lr") is not None]  # type: ignore[arg-type]


def test_no_lr_advice_exceeds_the_stability_limit_measured_in_the_same_report() -> None:
    """The README's vanishing example once got lr≈170-240 with λmax 2.5; every lr now stays below 2(1+β)/λmax."""
    report = _quickstart(0.5)
    lam = report.metrics["hessian_max_eigenvalue"]
    assert isinstance(lam, float) and lam > 0
    stable = 2 * (1 + SGD_README["momentum"]) / lam
    advised = _advised_lrs(report)
    assert report.findings_for("update_ratio") and advised
    assert all(0 < value <= stable for value in advised), (advised, stable)
    # too slow because the first layers are starved, not because of the lr: the root cause ranks first
    update = _first(report, "update_ratio")
    assert update.caused_by == ["vanishing_gradient"]
    assert [f.rule for f in report.findings].index("vanishing_gradient") < report.findings.index(update)


def test_lr_too_high_and_update_ratio_give_one_lr() -> None:
    """Both lr rules fire on lr 10 without momentum: one answer, at most half the measured limit 2/λmax."""
    report = _analyze("mlp_sgd_update_ratio_too_big", checks=("standard", "curvature"))
    assert report.findings_for("lr_too_high") and report.findings_for("update_ratio")
    lam = report.metrics["hessian_max_eigenvalue"]
    assert isinstance(lam, float)
    advised = _advised_lrs(report)
    assert len(set(advised)) == 1 and advised[0] <= 0.5 * 2 / lam * 1.05, (advised, lam)


def _kaiming_twin(name: str) -> float:
    """Global gradient norm of the same model, batch and seed with every Linear/Conv at Kaiming scale."""
    model, loss, inputs, targets = by_name(name).build()
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    out = model(*inputs)
    assert loss == "cross_entropy"
    F.cross_entropy(out, targets).backward()
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.grad is not None))


@pytest.mark.parametrize("name", ["deep_relu_mlp_normal_init", "cnn_normal_init_exploding"])
def test_clip_norm_is_the_sane_scale_norm_not_the_exploded_one(name: str) -> None:
    report = _report(name)
    exploded = report.metrics["global_grad_norm"]
    twin = _kaiming_twin(name)
    clip = next(r for r in _all(report) if r.action == "clip_gradients")
    max_norm = float(clip.params["max_norm"])  # type: ignore[arg-type]
    assert isinstance(exploded, float) and exploded > 1e4 * twin  # the old basis: median layer x sqrt(n) of these
    assert twin / 10 <= max_norm <= twin * 10, (max_norm, twin)
    assert f"max_norm={max_norm}" in (clip.snippet or "")


class _Encoder(nn.Module):
    def __init__(self, kind: type[nn.Module]) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.encoder = nn.ModuleDict({"rnn": kind(16, 32, batch_first=True)})
        self.head = nn.Linear(32, 4)

    def forward(self, tokens: Tensor) -> Tensor:
        h, _ = self.encoder["rnn"](self.emb(tokens))
        return self.head(h[:, -1])


@cache
def _recurrent(kind: type[nn.Module]) -> Report:
    torch.manual_seed(0)
    model = _Encoder(kind)
    tokens, y = torch.randint(0, 50, (16, 40)), torch.randint(0, 4, (16,))
    return analyze_module(model, "cross_entropy", (tokens,), y, AnalysisOptions())


def test_lstm_vanishing_advice_is_the_forget_gate_bias_on_the_real_path() -> None:
    report = _recurrent(nn.LSTM)
    vanishing = report.findings_for("vanishing_gradient")
    assert vanishing
    for finding in vanishing:
        first = finding.remediation[0]
        assert first.action == "set_forget_gate_bias" and first.params == {"layers": ["encoder.rnn"], "value": 1.0}
        assert "model.get_submodule('encoder.rnn')" in (first.snippet or "")
        assert any("Jozefowicz" in ref for ref in first.references)
    for r in _all(report):  # no "use an LSTM" on an LSTM, no Linear/Conv Kaiming for Embedding+LSTM
        assert r.action != "use_gated_recurrence"
        assert "nn.Conv2d" not in (r.snippet or "") and "emb" not in r.params.get("layers", [])  # type: ignore[operator]
        assert r.action != "use_relu_and_kaiming_init"


def test_plain_rnn_vanishing_gets_orthogonal_recurrence_and_a_gated_cell_for_its_path() -> None:
    (time_finding,) = [f for f in _recurrent(nn.RNN).findings_for("vanishing_gradient") if "time" in f.title]
    actions = [r.action for r in time_finding.remediation]
    assert actions[:2] == ["orthogonal_recurrent_init", "use_gated_recurrence"]
    assert time_finding.remediation[0].params["layers"] == ["encoder.rnn"]
    assert time_finding.remediation[0].params["scheme"] == "orthogonal"
    assert "'encoder.rnn'" in (time_finding.remediation[1].snippet or "")


def test_standardize_inputs_vectors_are_the_per_feature_batch_statistics() -> None:
    for name, dims, dim in (
        ("mlp_raw_tabular_features", (0,), 1),
        ("cnn_raw_pixels_0_255", (0, 2, 3), 1),
        ("lstm_huge_input_scale", (0, 1), -1),
    ):
        _, _, (x,), _ = by_name(name).build()
        fix = _first(_report(name), "input_not_normalized").remediation[0]
        assert fix.action == "standardize_inputs" and fix.params["dim"] == dim and fix.params["input"] == 0
        assert fix.params["mean"] == pytest.approx(x.mean(dim=dims).tolist(), rel=1e-4), name
        assert fix.params["std"] == pytest.approx(x.std(dim=dims).tolist(), rel=1e-4), name
        shown = f"{x.mean(dim=dims)[0]:.4g}"
        assert shown in (fix.snippet or ""), (shown, fix.snippet)  # the snippet quotes the same vectors


def test_standardize_targets_vectors_are_the_per_column_statistics() -> None:
    _, _, _, y = by_name("mlp_regression_raw_targets").build()
    report = _analyze("mlp_regression_raw_targets", optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.0})
    fix = _first(report, "unscaled_targets").remediation[0]
    assert fix.params["mean"] == pytest.approx(y.mean(0).tolist(), rel=1e-5)
    assert fix.params["std"] == pytest.approx(y.std(0).tolist(), rel=1e-5)
    assert report.findings[0].rule == "unscaled_targets"  # the root cause first, though its symptom is an error too


def test_sigmoid_advice_uses_sigmoid_gain_one() -> None:
    assert nn.init.calculate_gain("sigmoid") == 1.0
    report = _report("sigmoid_mlp_std1_saturated")
    redraws = [r for r in _all(report) if r.params.get("scheme")]
    assert redraws
    for r in redraws:
        assert r.params["nonlinearity"] == "sigmoid" and r.params["gain"] == 1.0
        assert "'tanh'" not in (r.snippet or "")
    assert [f.rule for f in report.findings][:2] == ["poor_initialization", "saturated_activation"]


def test_reinitialize_lists_every_off_scale_layer_and_none_at_kaiming_scale() -> None:
    model, loss, inputs, targets = by_name("deep_relu_mlp_normal_init").build()
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    healthy = linears[:2]
    for name in healthy:  # two layers already at Kaiming scale: never advised a re-draw
        nn.init.kaiming_normal_(model.get_submodule(name).weight, nonlinearity="relu")
    report = analyze_module(model, loss, inputs, targets, AnalysisOptions())
    fix = _first(report, "poor_initialization").remediation[0]
    assert fix.action == "reinitialize"
    assert fix.params["layers"] == linears[2:]  # all the std-1 layers, head included, in model order
    assert fix.params["scheme"] == "kaiming_normal" and fix.params["nonlinearity"] == "relu"
    assert fix.params["gain"] == pytest.approx(nn.init.calculate_gain("relu"))


def test_dead_units_held_by_a_negative_bias_get_the_bias_fix_first() -> None:
    fix = _first(_report("mlp_dead_relu_negative_bias"), "dead_relu").remediation[0]
    assert fix.action == "fix_bias_and_init" and fix.params == {"layers": ["net.0", "net.2"], "bias": 0.0}
    cnn = _first(_report("cnn_dead_relu_channels"), "dead_relu").remediation[0]
    assert cnn.action == "fix_bias_and_init" and cnn.params["layers"] == ["features.0"]


def test_loss_scale_lifts_the_underflowing_gradients_without_overflow() -> None:
    """Applied by hand: gradients x loss_scale rounded through fp16 keep (almost) every nonzero element."""
    model, _, (x,), y = by_name("mlp_fp16_underflow_converged").build()
    F.mse_loss(model(x), y).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    nonzero = grads[grads != 0]
    scale = _first(_report("mlp_fp16_underflow_converged"), "fp16_underflow").remediation[0].params["loss_scale"]
    assert isinstance(scale, float) and math.log2(scale).is_integer()

    def flushed(s: float) -> float:
        return float(((nonzero * s).half() == 0).float().mean())

    assert flushed(1.0) > 0.05 and flushed(scale) < 0.01
    assert torch.isfinite((grads * scale).half()).all()


def test_unused_parameters_snippet_names_the_real_module() -> None:
    fix = _first(_report("mlp_unused_aux_head"), "unused_parameters").remediation[0]
    assert fix.params["layers"] == ["aux_head"] and "'aux_head'" in (fix.snippet or "")
    assert "unused_head" not in (fix.snippet or "")


def test_guard_op_only_where_a_domain_op_produced_the_nan() -> None:
    log_nan = _first(_report("mlp_nan_log_negative"), "non_finite").remediation[0]
    assert log_nan.action == "guard_op" and log_nan.params["op"] == "aten.log.default"
    masked = _first(_report("transformer_all_padding_nan"), "non_finite").remediation[0]
    assert masked.action == "guard_masked_softmax"
    corrupt = _first(_report("cnn_inf_weight"), "non_finite").remediation
    assert [r.action for r in corrupt] == ["reload_weights", "reinitialize"]
    assert corrupt[1].params["layers"] == ["features.3"]


def test_rank_puts_a_root_cause_before_its_more_severe_symptom() -> None:
    def finding(rule: str, severity: str, caused_by: list[str]) -> Finding:
        return Finding(rule=rule, severity=severity, title=rule, message=rule, confidence=0.9, caused_by=caused_by)  # type: ignore[arg-type]

    ordered = rank(
        [
            finding("info_rule", "info", []),
            finding("symptom", "error", ["cause"]),
            finding("cause", "warning", []),
            finding("other", "error", []),
        ]
    )
    assert [f.rule for f in ordered] == ["cause", "symptom", "other", "info_rule"]


# docs/verify.md's required params per applicable action; everything else must be structural advice.
REQUIRED = {
    "lower_lr": {"lr"},
    "scale_lr": {"lr"},
    "clip_gradients": {"max_norm"},
    "reinitialize": {"layers", "scheme"},
    "fix_initialization": {"layers", "scheme"},
    "use_relu_and_kaiming_init": {"layers", "scheme"},
    "orthogonal_recurrent_init": {"layers", "scheme"},
    "rescale_weights": {"layers", "factor"},
    "rescale_preactivations": {"layers", "factor"},
    "fix_bias_and_init": {"layers", "bias"},
    "use_loss_scaling": {"loss_scale"},
    "standardize_inputs": {"mean", "std"},
    "standardize_targets": {"mean", "std"},
    "set_forget_gate_bias": {"layers"},
    "unfreeze": {"parameters"},
}


def test_every_applicable_remediation_in_the_zoo_carries_its_params() -> None:
    for case in PATHOLOGICAL:
        model = case.build()[0]
        modules = {name for name, _ in model.named_modules()}
        for r in _all(_report(case.name)):
            if r.action not in REQUIRED:
                continue
            missing = REQUIRED[r.action] - {k for k, v in r.params.items() if v is not None}
            assert not missing, (case.name, r.action, missing)
            for layer in r.params.get("layers", []):  # type: ignore[union-attr]
                assert layer in modules, (case.name, r.action, layer)


def test_zoo_has_a_case_per_applicable_family() -> None:
    """The zoo's pathologies exercise the advice above (guards against a rename silently skipping them)."""
    actions = {r.action for case in PATHOLOGICAL for r in _all(_report(case.name))}
    assert {"reinitialize", "clip_gradients", "standardize_inputs", "fix_bias_and_init", "use_loss_scaling"} <= actions
    assert zoo.by_name("deep_relu_mlp_normal_init").healthy is False


def _final_loss(model: nn.Module, x: Tensor, y: Tensor, steps: int = 30) -> float:
    """Cross-entropy after `steps` of SGD(0.01, momentum 0.9), the verify check's default trial."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def _first_to_last_grad(model: nn.Sequential, x: Tensor, y: Tensor) -> float:
    """Gradient RMS of the first Linear's weight over the last one's, by plain autograd."""
    F.cross_entropy(model(x), y).backward()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    rms = [float(m.weight.grad.pow(2).mean().sqrt()) for m in linears]  # type: ignore[union-attr]
    model.zero_grad()
    return rms[0] / rms[-1]


@pytest.mark.parametrize("name", ["deep_sigmoid_mlp"])
def test_deep_sigmoid_vanishing_gets_an_applicable_backward_gain_that_trains(name: str) -> None:
    """Applied by hand from action + params: gain 4 = 1/sigmoid'(0) on the hidden layers reading sigmoids, biases
    centred on the sigmoid's mean 1/2; the output layer keeps its scale (4x logits would start far higher)."""
    fix = next(r for r in _report(name).findings[0].remediation if r.action == "reinitialize")
    assert fix.params["nonlinearity"] == "sigmoid" and fix.params["gain"] == 4.0 and fix.params["input_mean"] == 0.5
    assert fix.params["layers"] == [f"net.{i}" for i in range(2, 19, 2)]  # reading a sigmoid, the head net.20 not
    model, _, (x,), y = by_name(name).build()
    base_ratio, baseline = _first_to_last_grad(model, x, y), _final_loss(model, x, y)
    model, _, (x,), y = by_name(name).build()
    torch.manual_seed(0)
    with torch.no_grad():
        for layer_name in fix.params["layers"]:  # type: ignore[union-attr]
            layer = model.get_submodule(layer_name)
            nn.init.normal_(layer.weight, std=4.0 / layer.weight[0].numel() ** 0.5)
            layer.bias.copy_(-0.5 * layer.weight.sum(dim=1))
    ratio = _first_to_last_grad(model, x, y)
    assert base_ratio < 1e-6 and ratio > 1e3 * base_ratio  # the gradient reaches the first layer
    assert _final_loss(model, x, y) < baseline  # and the model trains further in the trial's 30 steps


def _input_rms(model: nn.Module, layer: str, inputs: tuple[Tensor, ...]) -> tuple[float, float]:
    """(RMS of the named layer's input, RMS of its output), by a forward hook on the plain model."""
    seen: list[tuple[float, float]] = []
    hook = model.get_submodule(layer).register_forward_hook(
        lambda _m, args, out: seen.append((float(args[0].pow(2).mean().sqrt()), float(out.pow(2).mean().sqrt())))
    )
    with torch.no_grad():
        model(*inputs)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("deep_residual_mlp_no_norm", "head"),
        ("transformer_no_norm_exploding", "head"),
        ("transformer_tanh_ffn_saturated", "blocks.0.ffn.fc1"),
        ("deep_relu_mlp_kaiming", "net.48"),
    ],
)
def test_a_layers_input_rms_is_read_off_its_own_output(name: str, layer: str) -> None:
    """rms(Wx) ~ rms(W) sqrt(fan_in) rms(x): the residual stream reaching a layer, with no graph needed."""
    from gradhealth.diagnostics.measurements import LayerMeasure
    from gradhealth.diagnostics.rules.advice import own_input_rms

    model, _, inputs, _ = by_name(name).build()
    true_in, out = _input_rms(model, layer, inputs)
    module = model.get_submodule(layer)
    params = list(module.parameters())
    measure = LayerMeasure(
        name=layer,
        type="Linear",
        depth=0,
        numel=sum(p.numel() for p in params),
        grad_norm=None,
        weight_norm=math.sqrt(sum(float(p.detach().pow(2).sum()) for p in params)),
        update_norm=None,
        nonfinite=0,
        flushed=0,
        flushed_scaled=0,
        subnormal=0,
        nonzero_grads=0,
        missing_grads=0,
        fan_in=module.in_features,
        output_rms=out,
        kind="linear",
    )
    estimate = own_input_rms(measure)
    assert estimate is not None and true_in / 1.5 <= estimate <= true_in * 1.5, (estimate, true_in)


def _sgd_final(
    model: nn.Module, loss_fn: object, inputs: tuple[Tensor, ...], y: Tensor, max_norm: float | None
) -> float:
    """The loss after 30 steps of SGD(0.01, momentum 0.9), optionally clipped: the verify check's default trial."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(model(*inputs), y)  # type: ignore[operator]
        if not torch.isfinite(loss):
            return math.inf
        loss.backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
    with torch.no_grad():
        final = float(loss_fn(model(*inputs), y))  # type: ignore[operator]
    return final if math.isfinite(final) else math.inf


def test_exploded_residual_mlp_gets_a_clip_norm_that_binds_and_trains() -> None:
    """The head reads the whole residual stream: its own output gives that scale, the clip binds and trains."""
    report = _report("deep_residual_mlp_no_norm")
    exploded = report.metrics["global_grad_norm"]
    clip = next(r for r in _first(report, "exploding_gradient").remediation if r.action == "clip_gradients")
    max_norm = float(clip.params["max_norm"])  # type: ignore[arg-type]
    assert isinstance(exploded, float) and max_norm < 1e-6 * exploded
    model, _, inputs, y = by_name("deep_residual_mlp_no_norm").build()
    with torch.no_grad():
        start = float(F.mse_loss(model(*inputs), y))
    assert _sgd_final(model, F.mse_loss, inputs, y, None) == math.inf  # unclipped, the user's set-up diverges
    model, _, inputs, y = by_name("deep_residual_mlp_no_norm").build()
    assert _sgd_final(model, F.mse_loss, inputs, y, max_norm) < 0.5 * start


@pytest.mark.parametrize("name", ["transformer_adam_lr_1e9", "lstm_sgd_lr_1e9"])
def test_a_raised_lr_comes_with_a_10x_bracket(name: str) -> None:
    """Too slow: the 1e-3 update target and 10x it (1e-2, inside the healthy band) are both offered."""
    fixes = [r for r in _first(_report(name), "update_ratio").remediation if r.action == "scale_lr"]
    assert len(fixes) == 2
    low, high = (float(r.params["lr"]) for r in fixes)  # type: ignore[arg-type]
    assert high == pytest.approx(10 * low, rel=0.06)  # two significant digits each


def test_the_bracket_trains_further_for_adam_by_plain_torch() -> None:
    """Adam's step ignores the gradient's scale: the 1e-3 target lr trains a transformer far less than 10x it."""
    fixes = _first(_report("transformer_adam_lr_1e9"), "update_ratio").remediation
    finals = []
    for fix in fixes:
        model, _, inputs, y = by_name("transformer_adam_lr_1e9").build()
        opt = torch.optim.Adam(model.parameters(), lr=float(fix.params["lr"]))  # type: ignore[arg-type]
        for _ in range(30):
            opt.zero_grad()
            F.cross_entropy(model(*inputs), y).backward()
            opt.step()
        with torch.no_grad():
            finals.append(float(F.cross_entropy(model(*inputs), y)))
    assert finals[1] < 0.5 * finals[0]


def test_a_too_fast_lr_gets_no_bracket() -> None:
    fixes = _first(_report("mlp_sgd_update_ratio_too_big"), "update_ratio").remediation
    assert [r.action for r in fixes] == ["scale_lr"]


def test_saturation_from_oversized_embeddings_is_traced_to_the_tables() -> None:
    """N(0,1) tables times sqrt(d) feed an un-normalised tanh FFN: scale the tables by 1/stream RMS (by hand)."""
    name = "transformer_tanh_ffn_saturated"
    fix = next(r for r in _first(_report(name), "saturated_activation").remediation if r.action == "rescale_weights")
    assert fix.params["layers"] == ["embed", "pos"]
    model, _, inputs, y = by_name(name).build()
    stream, _ = _input_rms(model, "blocks.0.ffn.fc1", inputs)
    assert float(fix.params["factor"]) == pytest.approx(1 / stream, rel=0.2)  # type: ignore[arg-type]
    baseline = _sgd_final(model, F.cross_entropy, inputs, y, None)
    model, _, inputs, y = by_name(name).build()
    with torch.no_grad():
        for table in ("embed", "pos"):
            model.get_submodule(table).weight.mul_(float(fix.params["factor"]))  # type: ignore[arg-type]
    assert _sgd_final(model, F.cross_entropy, inputs, y, None) < 0.9 * baseline


def test_healthy_embedding_models_get_no_table_rescale() -> None:
    for name in ("embedding_transformer_classifier", "padded_transformer_classifier", "preln_transformer_encoder"):
        assert not [r for r in _all(_report(name)) if r.action == "rescale_weights"], name


def test_exploded_transformer_gets_the_branch_rescale_with_a_step_bounding_clip() -> None:
    """max_norm = 1e-3 ||W|| (1 - momentum) / lr: a clipped SGD step moves the weights by <= 1e-3 of their norm.
    The rescale alone still blows up under SGD(0.01, 0.9); with that clip the model trains (plain torch)."""
    name = "transformer_no_norm_exploding"
    fixes = [r for r in _first(_report(name), "exploding_gradient").remediation if r.action == "rescale_weights"]
    assert [("max_norm" in r.params) for r in fixes] == [False, True]
    plain, clipped = fixes
    model, _, inputs, y = by_name(name).build()
    weight_norm = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters()))
    max_norm = float(clipped.params["max_norm"])  # type: ignore[arg-type]
    assert max_norm == pytest.approx(1e-3 * weight_norm * (1 - 0.9) / 0.01, rel=0.05)  # two digits, no optimizer
    assert f"max_norm={max_norm}" in (clipped.snippet or "")
    finals = []
    for clip in (None, max_norm):
        model, _, inputs, y = by_name(name).build()
        with torch.no_grad():
            for layer in plain.params["layers"]:  # type: ignore[union-attr]
                model.get_submodule(layer).weight.mul_(float(plain.params["factor"]))  # type: ignore[arg-type]
            start = float(F.cross_entropy(model(*inputs), y))
        finals.append(_sgd_final(model, F.cross_entropy, inputs, y, clip))
    assert finals[0] == math.inf and finals[1] < 0.5 * start


def test_adam_gets_no_step_bounding_clip() -> None:
    """Adam's step ignores the gradient's norm: the bound does not exist, only the sane-scale clip is offered."""
    report = _analyze("transformer_no_norm_exploding", optimizer={"name": "adam", "lr": 1e-3})
    fixes = [r for f in report.findings_for("exploding_gradient") for r in f.remediation]
    assert fixes and not [r for r in fixes if r.action != "clip_gradients" and "max_norm" in r.params]
