"""The engine on real architectures (issue 11): silent on healthy GPT-2/BERT/ViT/Llama/T5/LSTM/ResNet,
and on each broken variant it fires the right rule at the right block.

Every label is first proven by behaviour, independently of gradhealth: a short AdamW run (healthy
models learn; broken ones go NaN, diverge, learn much less than their healthy twin, or leave a block
untouched), plus a look inside the damaged block with plain autograd. Hugging Face cases skip when
``transformers`` is not installed (``pip install -e .[hf]``); the LSTM and ResNet cases always run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, analyze_module, load_package, read_batch
from gradhealth.diagnostics.rules import RULE_IDS
from gradhealth.report import Finding, Report, severity_at_least
from torch import Tensor, nn

import gradhealth

from . import hf_zoo
from .hf_zoo import HFCase

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 30  # AdamW steps of the behaviour run
HEALTHY_FALL = 0.03  # a healthy model's loss falls by at least this fraction in STEPS steps
SLOWER = 2 / 3  # a "slower" broken model's loss falls by at most this share of its healthy twin's fall
DIVERGED = 2.0  # a loss that climbs to this multiple of its start has diverged
OUTLIER_GAIN = 100.0  # backward gradient gain of a mis-scaled block over its siblings' median

_LOSSES: dict[str, Callable[..., Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
}


# ----------------------------------------------------------------------------------------
# Behaviour runs and reports, each computed once per module
# ----------------------------------------------------------------------------------------


@dataclass
class Run:
    """The loss at every step of a short training run, and which parameters it moved."""

    losses: list[float]
    moved: dict[str, bool]

    @property
    def fall(self) -> float:
        """Relative fall of the loss from the first step to the last."""
        return (self.losses[0] - self.losses[-1]) / abs(self.losses[0])


class Lazy(dict[str, Any]):
    """A per-case cache that computes a value the first time its case is asked for."""

    def __init__(self, compute: Callable[[HFCase], Any]) -> None:
        super().__init__()
        self.compute = compute

    def __missing__(self, name: str) -> Any:
        value = self[name] = self.compute(hf_zoo.by_name(name))
        return value


def per_sample_loss(loss: hf_zoo.Loss, outputs: Tensor, targets: Tensor) -> Tensor:
    """The case's loss as one value per sample, without gradhealth code."""
    value = loss(outputs, targets) if callable(loss) else _LOSSES[loss](outputs, targets, reduction="none")
    return value.flatten(1).mean(dim=1) if value.dim() > 1 else value


def make_optimizer(spec: dict[str, Any], params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """The torch optimizer an OptimizerSpec-shaped dict describes."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "sgd":
        return torch.optim.SGD(params, **kwargs)
    kwargs.pop("momentum", None)
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec["name"]](params, **kwargs)


def train(case: HFCase) -> Run:
    """STEPS steps of the case's own optimizer on its fixed batch; stops at the first non-finite loss."""
    model, loss, inputs, targets = case.build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer(case.optimizer, model.parameters())
    losses: list[float] = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        value = per_sample_loss(loss, model(*inputs), targets).mean()
        losses.append(value.item())
        if not math.isfinite(losses[-1]):
            break
        value.backward()
        optimizer.step()
    moved = {n: not torch.equal(before[n], p.detach()) for n, p in model.named_parameters()}
    return Run(losses, moved)


def analyse(case: HFCase) -> Report:
    """The engine's report with the case's optimizer and checks (standard + curvature)."""
    model, loss, inputs, targets = case.build()
    options = AnalysisOptions(optimizer=case.optimizer, checks=case.checks)
    return analyze_module(model, loss, inputs, targets, options)


@pytest.fixture(scope="module")
def runs() -> Lazy:
    """Behaviour runs by case name."""
    return Lazy(train)


@pytest.fixture(scope="module")
def reports() -> Lazy:
    """Engine reports by case name."""
    return Lazy(analyse)


def require(case: HFCase) -> None:
    """Skip a Hugging Face case when transformers is not installed."""
    if case.needs_transformers:
        pytest.importorskip("transformers")


def describe(findings: list[Finding]) -> str:
    """Findings in one line each: severity, rule, first layers, evidence."""
    lines = [f"{f.severity} {f.rule} {f.layers[:4]} {dict(list(f.evidence.items())[:4])}" for f in findings]
    return "\n  ".join(lines) or "no findings"


def _ids(case: HFCase) -> str:
    return case.name


# ----------------------------------------------------------------------------------------
# Looking inside a block with plain autograd
# ----------------------------------------------------------------------------------------


def siblings(model: nn.Module, block: str) -> list[str]:
    """Module paths of the block and its siblings (children of the same parent), in order."""
    parent = block.rsplit(".", 1)[0]
    return [f"{parent}.{name}" for name, _ in model.get_submodule(parent).named_children()]


def block_io(model: nn.Module, paths: list[str], run: Callable[[], object]) -> dict[str, tuple[Tensor, Tensor]]:
    """Hidden state into and out of each module during run(), gradients retained (first tensor of each)."""
    seen: dict[str, tuple[Tensor, Tensor]] = {}

    def hook(path: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            x, y = args[0] if args else kwargs["hidden_states"], out[0] if isinstance(out, tuple) else out
            for t in (x, y):
                if t.requires_grad:
                    t.retain_grad()
            seen[path] = (x, y)

        return record

    handles = [model.get_submodule(p).register_forward_hook(hook(p), with_kwargs=True) for p in paths]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _rms(t: Tensor | None) -> float:
    assert t is not None
    return t.detach().double().pow(2).mean().sqrt().item()


def prove_gradient_jump(model: nn.Module, block: str, backward: Callable[[], object]) -> None:
    """Going backward, the gradient grows far more across the block than across any sibling."""
    io = block_io(model, siblings(model, block), backward)
    gain = {p: _rms(x.grad) / _rms(y.grad) for p, (x, y) in io.items()}
    others = statistics.median(g for p, g in gain.items() if p != block)
    assert gain[block] > OUTLIER_GAIN * others, gain


def prove_first_nonfinite(model: nn.Module, block: str, forward: Callable[[], object]) -> None:
    """The block is the first of its siblings whose output holds NaN/Inf; its input is finite."""
    paths = siblings(model, block)
    io = block_io(model, paths, forward)
    bad = [p for p in paths if not torch.isfinite(io[p][1]).all()]
    assert bad and bad[0] == block, bad
    assert torch.isfinite(io[block][0]).all()


def prove_no_gradient(model: nn.Module, block: str, backward: Callable[[], object]) -> None:
    """After one backward, exactly the block's parameters have no gradient."""
    backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    under = [n for n, _ in model.named_parameters() if n.startswith(block + ".")]
    assert under and sorted(missing) == sorted(under), missing


# ----------------------------------------------------------------------------------------
# The zoo is what it says
# ----------------------------------------------------------------------------------------


def test_zoo_contract() -> None:
    """Names are unique, every broken case has a healthy twin and a way to show its damage."""
    names = [c.name for c in hf_zoo.ALL]
    assert len(names) == len(set(names))
    assert {c.arch for c in hf_zoo.HEALTHY} >= {"gpt2", "bert", "vit", "llama", "t5", "lstm", "cnn"}
    for case in hf_zoo.HEALTHY:
        assert case.damage is None and case.block is None and case.twin is None, case.name
    for case in hf_zoo.BROKEN:
        twin = hf_zoo.by_name(case.twin or "")
        assert twin.healthy and twin.arch == case.arch, case.name
        assert case.damage is not None, case.name
        assert (case.block is not None) or case.damage in ("diverges", "slower"), case.name


@pytest.mark.parametrize("case", hf_zoo.ALL, ids=_ids)
def test_build_is_deterministic(case: HFCase) -> None:
    """Two builds give the same weights and batch, in train mode: the reports can be compared."""
    require(case)
    m1, _, x1, y1 = case.build()
    m2, _, x2, y2 = case.build()
    for (name, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=name)
    assert all(torch.equal(a, b) for a, b in zip((*x1, y1), (*x2, y2), strict=True))
    assert all(m.training for m in m1.modules())


@pytest.mark.parametrize("case", hf_zoo.HEALTHY, ids=_ids)
def test_healthy_model_trains(case: HFCase, runs: Lazy) -> None:
    """A short AdamW run lowers the loss clearly and stays finite."""
    require(case)
    run: Run = runs[case.name]
    assert all(math.isfinite(v) for v in run.losses), run.losses
    assert run.fall >= HEALTHY_FALL, f"loss fell {run.fall:.1%}: {run.losses[0]:.4g} -> {run.losses[-1]:.4g}"


@pytest.mark.parametrize("case", hf_zoo.BROKEN, ids=_ids)
def test_broken_model_is_damaged(case: HFCase, runs: Lazy) -> None:
    """The same short run shows the damage: NaN, divergence, much less progress, or a block left behind."""
    require(case)
    run: Run = runs[case.name]
    finite = all(math.isfinite(v) for v in run.losses)
    if case.damage == "nan":
        assert not finite, run.losses
    elif case.damage == "diverges":
        assert not finite or max(run.losses) > DIVERGED * run.losses[0], run.losses
    elif case.damage == "slower":
        twin: Run = runs[case.twin]
        assert finite and run.fall <= SLOWER * twin.fall, f"fell {run.fall:.2%}, healthy twin {twin.fall:.2%}"
    else:  # unused: the block's weights stay put while the rest of the model learns
        stuck = [n for n, moved in run.moved.items() if not moved]
        assert case.block and stuck and all(n.startswith(case.block + ".") for n in stuck), stuck
        assert finite and run.fall >= HEALTHY_FALL, run.losses


@pytest.mark.parametrize("case", [c for c in hf_zoo.BROKEN if c.block], ids=_ids)
def test_damage_sits_in_its_block(case: HFCase) -> None:
    """Plain autograd finds the damage in the named block and in none of its siblings."""
    require(case)
    assert case.block is not None
    model, loss, inputs, targets = case.build()

    def forward() -> Tensor:
        return per_sample_loss(loss, model(*inputs), targets).mean()

    if case.damage == "nan":
        prove_first_nonfinite(model, case.block, forward)
    elif case.damage == "unused":
        prove_no_gradient(model, case.block, lambda: forward().backward())
    else:
        prove_gradient_jump(model, case.block, lambda: forward().backward())


@pytest.mark.parametrize("case", hf_zoo.HEALTHY, ids=_ids)
def test_packages_through_the_archive(case: HFCase, tmp_path: Path) -> None:
    """gradhealth.package() writes an archive the worker's loader accepts and runs to the same loss."""
    require(case)
    model, loss, inputs, targets = case.build()
    path = gradhealth.package(model, loss, inputs, targets, tmp_path / "model.pt2")
    batch = gradhealth.save_batch(tmp_path / "batch.safetensors", inputs, targets)
    loaded = load_package(path)
    batch_inputs, batch_targets = read_batch(batch)
    got = loaded.per_sample_loss(batch_inputs, batch_targets)
    want = per_sample_loss(loss, model(*inputs), targets)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------
# The engine's verdicts
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", hf_zoo.HEALTHY, ids=_ids)
def test_healthy_model_gets_no_warning(case: HFCase, reports: Lazy) -> None:
    """Zero findings at warning or above on a healthy model (info is allowed).

    Reference from issue 11: the healthy Llama with a 32k vocabulary got exploding_gradient with a
    first-to-last ratio of 192 (the embedding's sparse gradient against the last layer's).
    """
    require(case)
    report: Report = reports[case.name]
    serious = [f for f in report.findings if severity_at_least(f.severity, "warning")]
    assert not serious, f"{case.name} ({case.note}):\n  {describe(serious)}"


@pytest.mark.parametrize("case", hf_zoo.ALL, ids=_ids)
def test_curvature_gives_an_eigenvalue_or_a_reason(case: HFCase, reports: Lazy) -> None:
    """The curvature check yields the top Hessian eigenvalue, or a skipped entry that says why."""
    require(case)
    report: Report = reports[case.name]
    eigenvalue = report.metrics.get("hessian_max_eigenvalue")
    reasons = [s.reason for s in report.skipped if s.check == "curvature"]
    if isinstance(eigenvalue, float) and math.isfinite(eigenvalue):
        assert not reasons, reasons
    else:
        assert reasons and all(r.strip() for r in reasons), f"no eigenvalue ({eigenvalue}) and no reason"


@pytest.mark.parametrize("case", hf_zoo.BROKEN, ids=_ids)
def test_broken_model_gets_its_rule_at_its_block(case: HFCase, reports: Lazy) -> None:
    """The expected rule fires (warning or above) and its findings lead with the damaged block, not a sibling."""
    require(case)
    assert case.expect is not None
    report: Report = reports[case.name]
    found = [f for f in report.findings_for(case.expect) if severity_at_least(f.severity, "warning")]
    registered = "" if case.expect in RULE_IDS else f" (no rule {case.expect!r} is registered yet)"
    assert found, f"{case.expect} did not fire on {case.name}{registered}:\n  {describe(report.findings)}"
    if case.block is None:
        return
    peers = [s for s in siblings(case.build()[0], case.block) if s != case.block]
    leads = [_first_block(f, [case.block, *peers]) for f in found]
    assert case.block in leads and set(leads) <= {case.block, None}, (
        f"{case.expect} on {case.name} should single out {case.block}; its findings lead with {leads}:\n  "
        f"{describe(found)}"
    )


def _first_block(finding: Finding, blocks: list[str]) -> str | None:
    """The first of these blocks the finding mentions, in its layers and then its evidence."""
    mentions = [*finding.layers, *(v for v in finding.evidence.values() if isinstance(v, str))]
    for mention in mentions:
        for block in blocks:
            if _under(mention, block):
                return block
    return None


def _under(path: str, prefix: str) -> bool:
    """The path is the module prefix or inside it (a #n suffix marks a repeated activation)."""
    return path == prefix or path.startswith((prefix + ".", prefix + "#"))
