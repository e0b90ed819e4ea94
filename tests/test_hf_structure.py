"""Layer structure and activations on transformers models built from configs (no downloads).

Tied weights, layer order by data flow, layer kinds by op (GPT-2's Conv1D), serial chains for
poor_initialization, composite activations (GPT-2's tanh GELU) and where a norm's output is read.
Every model goes through the packaging path the service uses: gradhealth.package -> load_package.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions
from gradhealth.diagnostics.activations import find_activations
from gradhealth.diagnostics.engine import Analyzer
from gradhealth.diagnostics.graph_map import parameter_layers
from gradhealth.diagnostics.loading import LoadedModel, load_package
from gradhealth.report import Report, severity_at_least
from gradhealth.sdk.packaging import package
from torch import Tensor, nn

from . import tiny_transformers as tiny

transformers = pytest.importorskip("transformers")

VOCAB, SEQ, BATCH, HIDDEN = 64, 16, 8, 32
ACTIVATION_RULES = ("poor_initialization", "dead_relu", "saturated_activation")


def _lm_loss(out: object, targets: Tensor) -> Tensor:
    logits = out.logits  # type: ignore[attr-defined]
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return per_token.view(targets.shape[0], -1).mean(1)


def _image_loss(out: object, targets: Tensor) -> Tensor:
    return F.cross_entropy(out.logits, targets, reduction="none")  # type: ignore[attr-defined]


def _tokens() -> tuple[Tensor, Tensor]:
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    return x, x.roll(-1, dims=1)


def gpt2(tied: bool = True, activation: str = "gelu_new") -> nn.Module:
    return tiny.gpt2(
        vocab=VOCAB, hidden=HIDDEN, layers=2, heads=2, positions=SEQ, tie_word_embeddings=tied,
        activation_function=activation, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip


def llama() -> nn.Module:
    return tiny.llama(
        vocab=VOCAB, hidden=HIDDEN, layers=2, heads=2, kv_heads=2, positions=SEQ, bos_token_id=0, eos_token_id=0
    )


def vit() -> nn.Module:
    return tiny.vit(image=16, hidden=HIDDEN, layers=2, heads=2, labels=10)


def _batch(model: nn.Module) -> tuple[Tensor, Tensor]:
    if isinstance(model, transformers.ViTForImageClassification):
        generator = torch.Generator().manual_seed(2)
        return torch.randn(BATCH, 3, 16, 16, generator=generator), torch.randint(0, 10, (BATCH,), generator=generator)
    return _tokens()


def _loss(model: nn.Module) -> Callable[[object, Tensor], Tensor]:
    return _image_loss if isinstance(model, transformers.ViTForImageClassification) else _lm_loss


def packaged(model: nn.Module, directory: Path) -> LoadedModel:
    """Save with gradhealth.package and load the file as a worker does."""
    x, y = _batch(model)
    path = package(model, _loss(model), x, y, directory / "model.pt2")
    return load_package(path)


def analyse(model: nn.Module, directory: Path) -> Report:
    x, y = _batch(model)
    return Analyzer(packaged(model, directory)).run((x,), y, AnalysisOptions())


def _warnings(report: Report, *rules: str) -> list[str]:
    return [
        f"{f.rule} {f.layers} {f.message[:200]}"
        for f in report.findings
        if f.rule in rules and severity_at_least(f.severity, "warning")
    ]


@cache
def _tmp(name: str) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"hf-{name}-"))


@cache
def gpt2_report(tied: bool = True) -> Report:
    return analyse(gpt2(tied), _tmp(f"gpt2-{tied}"))


def test_tied_embedding_is_one_used_layer_first_in_data_flow() -> None:
    report = gpt2_report(tied=True)
    names = [layer.name for layer in report.layers if layer.num_parameters]
    assert not _warnings(report, "unused_parameters"), _warnings(report, "unused_parameters")
    assert names[0] == "transformer.wte" and "lm_head" not in names, names
    assert names.index("transformer.h.0.ln_1") < names.index("transformer.h.1.ln_1") < names.index("transformer.ln_f")
    assert names[-1] == "transformer.ln_f", names
    wte = next(layer for layer in report.layers if layer.name == "transformer.wte")
    assert wte.type == "Embedding" and wte.grad_norm and wte.grad_norm > 0
    assert wte.extra["tied_with"] == "lm_head" and wte.extra["kind"] == "embedding"


def test_untied_head_comes_last() -> None:
    names = [layer.name for layer in gpt2_report(tied=False).layers if layer.num_parameters]
    assert names[0] == "transformer.wte" and names[-1] == "lm_head", names


def test_tied_aliases_are_recorded(tmp_path: Path) -> None:
    loaded = packaged(gpt2(tied=True), tmp_path)
    infos = {info.path: info for info in parameter_layers(loaded.graph_module)}  # type: ignore[arg-type]
    assert infos["model.transformer.wte"].tied_with == ["model.lm_head"]
    assert "model.lm_head" not in infos


def test_conv1d_is_linear_with_fans_from_the_graph(tmp_path: Path) -> None:
    loaded = packaged(gpt2(), tmp_path)
    infos = {info.path: info for info in parameter_layers(loaded.graph_module)}  # type: ignore[arg-type]
    c_fc, c_attn = infos["model.transformer.h.0.mlp.c_fc"], infos["model.transformer.h.0.attn.c_attn"]
    assert (c_fc.type, c_fc.kind, c_fc.fan_in, c_fc.fan_out) == ("Conv1D", "linear", HIDDEN, 4 * HIDDEN)
    assert (c_attn.kind, c_attn.fan_in, c_attn.fan_out) == ("linear", HIDDEN, 3 * HIDDEN)
    assert infos["model.transformer.wte"].kind == "embedding"
    assert infos["model.transformer.h.0.ln_1"].kind == "norm"
    # parallel projections are not a chain: c_proj reads the attention of c_attn's values, c_fc reads a norm
    assert infos["model.transformer.h.0.attn.c_proj"].serial_inputs == ["model.transformer.h.0.attn.c_attn"]
    assert infos["model.transformer.h.0.mlp.c_fc"].serial_inputs == []
    report = gpt2_report()
    fc = next(layer for layer in report.layers if layer.name == "transformer.h.0.mlp.c_fc")
    assert (fc.extra["fan_in"], fc.extra["fan_out"], fc.extra["kind"]) == (HIDDEN, 4 * HIDDEN, "linear")


class Conv1DStack(nn.Module):
    """Serial transformers Conv1D layers with std-1 weights: the signal grows ~sqrt(fan_in/2) per layer."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.layers = nn.ModuleList(Conv1D(HIDDEN, HIDDEN) for _ in range(4))
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=1.0)
        self.head = nn.Linear(HIDDEN, 4)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def test_conv1d_stack_is_covered_by_poor_initialization(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Conv1DStack().train()
    x, y = torch.randn(BATCH, HIDDEN), torch.randint(0, 4, (BATCH,))
    report = Analyzer(load_package(package(model, "cross_entropy", x, y, tmp_path / "m.pt2"))).run(
        (x,), y, AnalysisOptions()
    )
    findings = report.findings_for("poor_initialization")
    assert findings, [f.rule for f in report.findings]
    assert {"layers.0", "layers.3"} <= set(findings[0].layers), findings[0].layers


@pytest.mark.parametrize("build", [gpt2, llama, vit], ids=["gpt2", "llama", "vit"])
def test_healthy_library_init_gets_no_init_or_activation_warning(build: Callable[[], nn.Module]) -> None:
    report = gpt2_report() if build is gpt2 else analyse(build(), _tmp(build.__name__))
    assert not _warnings(report, *ACTIVATION_RULES), _warnings(report, *ACTIVATION_RULES)


def _flat_fraction_by_autograd(model: nn.Module, act: nn.Module, x: Tensor) -> float:
    """Independent reference: f'(pre-activation) by autograd on the eager module, flat below 1% of max f'."""
    captured: list[Tensor] = []
    handle = act.register_forward_hook(lambda module, args, out: captured.append(args[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    grid = torch.linspace(-12, 12, 48001, requires_grad=True)
    act(grid).sum().backward()
    max_slope = grid.grad.abs().max()
    pre = captured[0].clone().requires_grad_(True)
    act(pre).sum().backward()
    return float((pre.grad.abs() < 0.01 * max_slope).float().mean())


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_gelu_saturation_names_the_block_gelu_and_feeding_layer(activation: str, tmp_path: Path) -> None:
    model = gpt2(activation=activation)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight.mul_(100.0)
    x, _ = _tokens()
    expected = _flat_fraction_by_autograd(model, model.transformer.h[1].mlp.act, x)
    report = analyse(model, tmp_path)
    findings = report.findings_for("saturated_activation")
    assert len(findings) == 1, [(f.layers, f.message) for f in findings]
    finding = findings[0]
    assert finding.layers == ["transformer.h.1.mlp.act", "transformer.h.1.mlp.c_fc"], finding.layers
    assert finding.evidence["activation"] == "transformer.h.1.mlp.act"
    assert finding.evidence["activation_kind"] == "gelu"
    assert finding.evidence["feeding_layer"] == "transformer.h.1.mlp.c_fc"
    assert "gelu" in finding.message and "c_fc" in finding.message and "tanh" not in finding.message
    assert math.isclose(finding.evidence["fraction:transformer.h.1.mlp.act"], expected, abs_tol=0.005)
    assert "use_non_saturating_activation" not in {r.action for r in finding.remediation}


def test_rmsnorm_output_is_read_after_its_weight(tmp_path: Path) -> None:
    model = llama()
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight.uniform_(0.5, 1.5)  # a weight that changes the RMS
    x, _ = _tokens()
    captured: list[Tensor] = []
    norm = model.model.layers[0].input_layernorm
    handle = norm.register_forward_hook(lambda module, args, out: captured.append(out.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    eager_rms = float(captured[0].pow(2).mean().sqrt())
    report = analyse(model, tmp_path)
    layer = next(layer for layer in report.layers if layer.name == "model.layers.0.input_layernorm")
    assert layer.output_rms is not None
    assert math.isclose(layer.output_rms, eager_rms, rel_tol=1e-3), (layer.output_rms, eager_rms)
    assert 0.5 < layer.output_rms < 1.5


class Composites(nn.Module):
    """Activations spelled as elementwise ops, as libraries write them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d, self.e, self.f = (nn.Linear(8, 8) for _ in range(6))

    def forward(self, x: Tensor) -> Tensor:
        x = self.a(x)
        x = x * torch.sigmoid(x)  # SiLU / swish
        x = self.b(x)
        x = x * torch.tanh(F.softplus(x))  # Mish
        x = self.c(x)
        x = x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))  # exact GELU
        x = self.d(x)
        x = x * F.relu6(x + 3.0) / 6.0  # hardswish
        x = self.e(x)
        x = F.relu6(x + 3.0) / 6.0  # hardsigmoid
        x = self.f(x)
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def test_composite_activations_are_recognised_once() -> None:
    from gradhealth.diagnostics.export import export_per_sample_loss

    x, y = torch.randn(4, 8), torch.randn(4, 8)
    ep = export_per_sample_loss(Composites().train(), "mse", x, y)
    sites = find_activations(ep.module().graph)
    kinds = [site.kind for site in sites]
    assert kinds == ["silu", "mish", "gelu", "hardswish", "hardsigmoid", "gelu"], [site.key for site in sites]
    assert [site.key for site in sites][-1] == "gelu_tanh"


def test_dead_relu_names_the_relu_and_its_feeding_layer() -> None:
    from gradhealth.diagnostics import analyze_module

    from .zoo import by_name

    model, loss, inputs, targets = by_name("mlp_dead_relu_negative_bias").build()
    finding = analyze_module(model, loss, inputs, targets).findings_for("dead_relu")[0]
    feeders = dict(zip(finding.evidence["activations"], finding.evidence["feeding_layers"], strict=True))  # type: ignore[arg-type]
    assert feeders == {"net.1": "net.0", "net.3": "net.2"}, finding.evidence
    assert {"net.0", "net.1", "net.2", "net.3"} <= set(finding.layers)
    assert "fed by net.2" in finding.message


def test_llama_chains_follow_data_flow_not_siblings(tmp_path: Path) -> None:
    infos = {info.path: info for info in parameter_layers(packaged(llama(), tmp_path).graph_module)}  # type: ignore[arg-type]
    block = "model.model.layers.0"
    assert infos[f"{block}.self_attn.q_proj"].serial_inputs == []  # reads the norm, like k and v
    assert infos[f"{block}.self_attn.o_proj"].serial_inputs == [f"{block}.self_attn.v_proj"]  # q/k go through softmax
    assert set(infos[f"{block}.mlp.down_proj"].serial_inputs) == {f"{block}.mlp.gate_proj", f"{block}.mlp.up_proj"}
    assert infos["model.model.layers.1.self_attn.v_proj"].serial_inputs == []  # residual add and norm between
    assert infos[f"{block}.input_layernorm"].kind == "norm" and infos["model.lm_head"].kind == "linear"
