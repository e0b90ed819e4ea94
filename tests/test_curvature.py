"""Curvature: Lanczos against dense Hessians, tied weights, fused attention, and skipped checks."""

from __future__ import annotations

import copy
from collections.abc import Callable
from xml.etree import ElementTree

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, Analyzer, OptimizerSpec, analyze_module, from_exported_program
from gradhealth.diagnostics.attention import math_attention, unfused_copy
from gradhealth.diagnostics.curvature import lanczos_top_eigenvalue
from gradhealth.diagnostics.export import PackageMetadata, export_per_sample_loss
from gradhealth.diagnostics.hvp import hessian_operator
from gradhealth.report import to_html, to_junit, to_markdown
from torch import Tensor, nn
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx

from .dense_hessian import LossOf, flat_loss

CURVATURE = AnalysisOptions(checks=("standard", "curvature"), optimizer=OptimizerSpec(name="sgd", lr=1e-4))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dense_spectrum(model: nn.Module, loss_of: LossOf) -> Tensor:
    """Eigenvalues (ascending) of the dense Hessian w.r.t. the model's distinct parameters."""
    flat, f = flat_loss(model, loss_of)
    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, flat))


class Quadratic(nn.Module):
    """loss = 1/2 w^T A w with a chosen spectrum: the exact answer is known."""

    def __init__(self, eigenvalues: list[float], seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
        self.register_buffer("a", q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T)
        self.w = nn.Parameter(torch.randn(len(eigenvalues), generator=g, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * (self.w @ self.a @ self.w) + 0 * x.sum()


def _quadratic(eigenvalues: list[float]) -> tuple[nn.Module, Callable[[Callable[..., Tensor]], Tensor]]:
    model = Quadratic(eigenvalues, seed=3)
    x = torch.zeros(2, dtype=torch.float64)
    return model, lambda f: f(x)


def _regression(seed: int) -> tuple[nn.Module, Callable[[Callable[..., Tensor]], Tensor]]:
    """A tanh regressor far from targets of scale 100: the residual term makes the Hessian indefinite."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), 100 * torch.randn(16, 1, dtype=torch.float64)
    return model, lambda f: F.mse_loss(f(x), y)


def _classifier() -> tuple[nn.Module, Callable[[Callable[..., Tensor]], Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x, y = torch.randn(20, 6, dtype=torch.float64), torch.randint(0, 3, (20,))
    return model, lambda f: F.cross_entropy(f(x), y)


# (case, how the top algebraic eigenvalue relates to the largest-magnitude one)
CASES = {
    # spectrum -50 .. 3: power iteration would answer -50
    "quadratic_negative_dominates": lambda: _quadratic([3.0, 1.0, 0.5, -0.2, -7.0, -50.0] + [0.1] * 34),
    # concave: every eigenvalue negative, the top one is -0.5 while the largest magnitude is -40
    "quadratic_negative_definite": lambda: _quadratic([-0.5, -1.0, -3.0, -40.0] + [-2.0] * 36),
    # seed 0: lambda_min ~ -100.4, lambda_max ~ 85.2 (the regression case of issue 11)
    "regression_negative_dominates": lambda: _regression(0),
    # seed 2: lambda_max ~ 119.4 just above |lambda_min| ~ 116.2
    "regression_positive_dominates": lambda: _regression(2),
    "tanh_classifier": _classifier,
}


@pytest.mark.parametrize("name", list(CASES))
def test_lanczos_finds_the_top_algebraic_eigenvalue(name: str) -> None:
    model, loss_of = CASES[name]()
    spectrum = dense_spectrum(model, loss_of)
    top, magnitude = float(spectrum[-1]), float(spectrum[spectrum.abs().argmax()])
    op = hessian_operator(loss_of(model), list(model.parameters()))
    assert op is not None and op.dim == spectrum.numel() > 30
    exact = lanczos_top_eigenvalue(op, op.dim, op.gradient.double(), max_steps=op.dim, rel_tol=1e-10)
    assert exact.eigenvalue == pytest.approx(top, rel=1e-8, abs=1e-10)
    default = lanczos_top_eigenvalue(op, op.dim, op.gradient.double())  # 30 steps, residual <= 1e-3 |theta|
    plain = lanczos_top_eigenvalue(op, op.dim, op.gradient.double(), max_steps=op.dim, max_basis_bytes=0)
    assert plain.eigenvalue == pytest.approx(top, rel=1e-3)  # two-vector Lanczos when the basis would not fit
    assert default.eigenvalue == pytest.approx(top, rel=1e-3)
    assert default.residual <= 1e-3 * abs(default.eigenvalue) or default.steps == 30
    if name.endswith("negative_dominates") or name.endswith("negative_definite"):
        assert abs(magnitude - top) > 0.1 * abs(top)  # the old largest-magnitude answer was wrong here


def test_lanczos_is_deterministic_and_exact_on_small_operators() -> None:
    a = torch.diag(torch.tensor([4.0, -9.0, 1.0], dtype=torch.float64))
    first = lanczos_top_eigenvalue(lambda v: a @ v, 3, a[0], max_steps=30)
    again = lanczos_top_eigenvalue(lambda v: a @ v, 3, a[0], max_steps=30)
    assert first == again
    assert first.eigenvalue == pytest.approx(4.0, rel=1e-12) and first.steps <= 3


def test_engine_reports_the_top_algebraic_eigenvalue_of_an_indefinite_regression() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    x, y = torch.randn(16, 3), 100 * torch.randn(16, 1)
    spectrum = dense_spectrum(copy.deepcopy(model).double(), lambda f: F.mse_loss(f(x.double()), y.double()))
    assert spectrum[0] < -spectrum[-1] < 0  # the largest magnitude is negative, the top is positive
    options = CURVATURE.model_copy(update={"optimizer": OptimizerSpec(name="sgd", lr=0.5)})
    report = analyze_module(model, "mse", x, y, options)
    assert report.metrics["hessian_max_eigenvalue"] == pytest.approx(float(spectrum[-1]), rel=1e-3)
    assert report.skipped == []
    assert report.findings_for("lr_too_high")  # 0.5 * lambda_max >> 2: the old power iteration missed it


class TiedLM(nn.Module):
    """Embedding and output projection share one matrix (GPT-2's wte / lm_head)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 5)
        self.mix = nn.Linear(5, 5)
        self.out = nn.Linear(5, 11, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(torch.tanh(self.mix(self.emb(tokens).mean(1))))


def test_tied_weights_count_once_even_as_distinct_parameter_objects() -> None:
    torch.manual_seed(0)
    model = TiedLM()
    x, y = torch.randint(0, 11, (8, 4)), torch.randint(0, 11, (8,))
    spectrum = dense_spectrum(model, lambda f: F.cross_entropy(f(x), y))
    assert analyze_module(model, "cross_entropy", x, y, CURVATURE).metrics["hessian_max_eigenvalue"] == pytest.approx(
        float(spectrum[-1]), rel=1e-3
    )
    # What issue 11 saw for GPT-2: the tied matrix as separate parameter objects over one storage,
    # one of them never read by the graph.
    ep = export_per_sample_loss(model, "cross_entropy", x, y)
    loaded = from_exported_program(ep, PackageMetadata(returns_loss=True, num_inputs=1, loss="cross_entropy"), None)
    holder = loaded.module.get_submodule("model")
    shared = holder.get_parameter("emb.weight")
    holder.get_submodule("out").weight = nn.Parameter(shared.detach())
    holder.register_parameter("wte_copy", nn.Parameter(shared.detach()))
    views = [
        p for p in loaded.module.parameters() if p.untyped_storage().data_ptr() == shared.untyped_storage().data_ptr()
    ]
    assert len(views) == 3 and len({id(p) for p in views}) == 3
    report = Analyzer(loaded).run((x,), y, CURVATURE)
    assert report.skipped == []
    assert report.metrics["hessian_max_eigenvalue"] == pytest.approx(float(spectrum[-1]), rel=1e-3)


def test_a_copy_the_graph_never_uses_is_left_out() -> None:
    torch.manual_seed(0)
    used = nn.Parameter(torch.randn(4, dtype=torch.float64))
    alias = nn.Parameter(used.detach())  # same storage, a distinct parameter object, unused
    assert alias.untyped_storage().data_ptr() == used.untyped_storage().data_ptr()
    loss = (used**4).sum()
    op = hessian_operator(loss, [alias, used])
    assert op is not None and op.dim == 4
    top = lanczos_top_eigenvalue(op, op.dim, op.gradient.double(), rel_tol=1e-12)
    assert top.eigenvalue == pytest.approx(float((12 * used.detach() ** 2).max()), rel=1e-9)


def test_failure_is_a_skipped_check_with_the_op_named() -> None:
    class Distances(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.centres = nn.Parameter(torch.randn(3, 4))

        def forward(self, x: Tensor) -> Tensor:
            return -torch.cdist(x.unsqueeze(1), self.centres.unsqueeze(0)).squeeze(1)  # no double backward

    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    report = analyze_module(Distances(), "cross_entropy", x, y, CURVATURE)
    assert "hessian_max_eigenvalue" not in report.metrics
    assert [s.check for s in report.skipped] == ["curvature"]
    reason = report.skipped[0].reason
    assert "_cdist_backward" in reason and "second derivative" in reason
    assert "## Checks not run" in to_markdown(report) and reason in to_markdown(report)
    assert "Checks not run" in to_html(report) and "_cdist_backward" in to_html(report)
    junit = ElementTree.fromstring(to_junit(report))
    suite = junit.find("testsuite")
    assert suite is not None and suite.get("skipped") == "1"
    skipped = suite.find("testcase[@name='check:curvature']/skipped")
    assert skipped is not None and skipped.get("message") == reason


def test_lr_too_high_without_an_optimizer_is_a_skipped_check() -> None:
    torch.manual_seed(0)
    options = AnalysisOptions(checks=("standard", "curvature"))
    report = analyze_module(nn.Linear(3, 2), "mse", torch.randn(4, 3), torch.randn(4, 2), options)
    assert isinstance(report.metrics["hessian_max_eigenvalue"], float)
    assert [s.check for s in report.skipped] == ["lr_too_high"] and "optimizer" in report.skipped[0].reason


def test_nan_loss_is_a_skipped_check() -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    report = analyze_module(model, "mse", torch.randn(4, 3), torch.randn(4, 2), CURVATURE)
    assert [s.check for s in report.skipped] == ["curvature"]
    assert "NaN/Inf" in report.skipped[0].reason


class FusedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 4).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2).mean(1))


def test_graph_naming_the_fused_cpu_kernel_is_rewritten_to_math() -> None:
    torch.manual_seed(0)
    model, x, y = FusedAttention(), torch.randn(4, 5, 8), torch.randint(0, 3, (4,))
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    # Traced below autograd, SDPA is already dispatched to the fused CPU kernel (no double backward).
    gm = make_fx(lambda p, inputs: functional_call(model, p, (inputs,)))(params, x)
    fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    assert any(n.target is fused for n in gm.graph.nodes)
    broken = hessian_operator(F.cross_entropy(gm(params, x), y), list(params.values()))
    assert broken is not None
    with pytest.raises(RuntimeError, match="not implemented"):
        broken(torch.ones(broken.dim))
    rewritten = unfused_copy(gm)
    assert rewritten is not None and not any(n.target is fused for n in rewritten.graph.nodes)
    torch.testing.assert_close(rewritten(params, x), gm(params, x))
    op = hessian_operator(F.cross_entropy(rewritten(params, x), y), list(params.values()))
    assert op is not None
    got = lanczos_top_eigenvalue(op, op.dim, op.gradient)
    with math_attention():  # the eager reference needs the math kernel too
        eager = hessian_operator(F.cross_entropy(model(x), y), list(model.parameters()))
        assert eager is not None
        want = lanczos_top_eigenvalue(eager, eager.dim, eager.gradient)
    assert got.eigenvalue == pytest.approx(want.eigenvalue, rel=1e-4)
