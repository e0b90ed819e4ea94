"""Curvature through `transformers` attention and tied embeddings, on the package path the service runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, OptimizerSpec, analyze_files, write_batch
from gradhealth.diagnostics.curvature import lanczos_top_eigenvalue
from gradhealth.diagnostics.curvature_pass import adam_scale
from gradhealth.diagnostics.curvature_stats import LAMBDA_TOL
from gradhealth.sdk import package
from torch import Tensor, nn

from . import tiny_transformers as tiny

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIONS = AnalysisOptions(checks=("standard", "curvature"), optimizer=OptimizerSpec(name="adam", lr=1e-3))


class Logits(nn.Module):
    """A Hugging Face model as (inputs) -> logits: the last token's for language models."""

    def __init__(self, model: nn.Module, vision: bool) -> None:
        super().__init__()
        self.model = model
        self.vision = vision

    def forward(self, x: Tensor) -> Tensor:
        if self.vision:
            return self.model(pixel_values=x).logits
        return self.model(input_ids=x).logits[:, -1]


def _llama(attn: str) -> nn.Module:
    return tiny.llama(vocab=64, hidden=16, layers=2, heads=2, kv_heads=1, positions=32, attn=attn)


def _gpt2(attn: str) -> nn.Module:
    """No dropout: the two runs compared must see the same function; lm_head.weight is tied to wte."""
    return tiny.gpt2(vocab=64, hidden=16, layers=2, heads=2, positions=32, attn=attn)


def _vit(attn: str) -> nn.Module:
    return tiny.vit(image=8, hidden=16, layers=2, heads=2, labels=3, attn=attn)


MODELS: dict[str, tuple[Callable[[str], nn.Module], bool]] = {
    "llama": (_llama, False),
    "gpt2": (_gpt2, False),
    "vit": (_vit, True),
}


def _batch(vision: bool) -> tuple[Tensor, Tensor]:
    torch.manual_seed(1)
    if vision:
        return torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    return torch.randint(0, 64, (4, 8)), torch.randint(0, 64, (4,))


def _eager_reference(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """The same Lanczos on the eager model with the non-fused attention implementation."""
    from gradhealth.diagnostics.hvp import hessian_operator

    op = hessian_operator(F.cross_entropy(model(x), y), list(model.parameters()))
    assert op is not None
    # the check's own Lanczos (gradient start, its tolerance), so the two differ only by the attention path
    plain = lanczos_top_eigenvalue(op, op.dim, op.gradient, rel_tol=LAMBDA_TOL, start=op.gradient)
    scale = adam_scale(op.gradient, OPTIONS.optimizer.eps if OPTIONS.optimizer else 1e-8)
    pre = lanczos_top_eigenvalue(
        lambda v: scale * op(scale * v), op.dim, op.gradient, rel_tol=LAMBDA_TOL, start=scale * op.gradient
    )
    return plain.eigenvalue, pre.eigenvalue


@pytest.mark.parametrize("name", list(MODELS))
def test_curvature_through_sdpa_matches_eager_attention(name: str, tmp_path: Path) -> None:
    build, vision = MODELS[name]
    sdpa = Logits(build("sdpa"), vision)
    x, y = _batch(vision)
    model_path = package(sdpa, "cross_entropy", x, y, tmp_path / "model.pt2")
    batch_path = write_batch(tmp_path / "batch.safetensors", x, y)
    report = analyze_files(model_path, batch_path, OPTIONS)
    assert report.skipped == []
    sharpness = report.metrics["hessian_max_eigenvalue"]
    preconditioned = report.metrics["preconditioned_sharpness"]
    assert isinstance(sharpness, float) and isinstance(preconditioned, float)

    eager = Logits(build("eager"), vision)
    eager.load_state_dict(sdpa.state_dict())
    want_plain, want_pre = _eager_reference(eager, x, y)
    assert sharpness == pytest.approx(want_plain, rel=1e-3)
    assert preconditioned == pytest.approx(want_pre, rel=1e-3)


def test_fused_attention_has_no_double_backward_without_the_math_kernel() -> None:
    """What the curvature pass works around: without it, the HVP through SDPA fails on CPU."""
    from gradhealth.diagnostics.hvp import hessian_operator

    model, (x, y) = Logits(_llama("sdpa"), False), _batch(False)
    op = hessian_operator(F.cross_entropy(model(x), y), list(model.parameters()))
    assert op is not None
    with pytest.raises(RuntimeError, match="flash_attention"):
        op(torch.ones(op.dim))
