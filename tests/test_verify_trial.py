"""Verify's trial loop: the lean graph trains exactly as the exported module, each trial times itself."""

from __future__ import annotations

import copy

import pytest
import torch
from gradhealth.diagnostics import AnalysisOptions, Analyzer
from gradhealth.diagnostics.export import PackageMetadata, export_per_sample_loss
from gradhealth.diagnostics.loading import from_exported_program
from gradhealth.diagnostics.losses import LossFn, per_sample, resolve_loss
from gradhealth.diagnostics.options import OptimizerSpec
from gradhealth.diagnostics.probes import PROBE_MODULE
from gradhealth.diagnostics.remedies import TrialSetup
from gradhealth.diagnostics.trial_model import SKIPPED_CALLS, lean_model
from gradhealth.diagnostics.verify_trial import run_trial

from tests.zoo import by_name


def _analyzer(name: str) -> tuple[Analyzer, tuple[torch.Tensor, ...], torch.Tensor, torch.nn.Module, LossFn | str]:
    model, loss, inputs, targets = by_name(name).build()
    twin = copy.deepcopy(model)
    ep = export_per_sample_loss(model, loss, inputs, targets)
    meta = PackageMetadata(returns_loss=True, num_inputs=len(inputs), loss=str(loss))
    analyzer = Analyzer(from_exported_program(ep, meta, None))
    assert analyzer.graph is not None
    analyzer.graph.recorder.enabled = False  # as verify runs its trials
    return analyzer, inputs, targets, twin, loss


def _setup(analyzer: Analyzer, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor, lr: float) -> TrialSetup:
    params = {analyzer.loaded.display_name(n): p for n, p in analyzer.loaded.module.named_parameters()}
    return TrialSetup(params, inputs, targets, lr, set(params))


def test_the_lean_graph_trains_exactly_as_the_exported_module() -> None:
    analyzer, inputs, targets, _, _ = _analyzer("preln_transformer_encoder")
    module = analyzer.loaded.module
    lean = lean_model(analyzer.loaded)
    calls = {n.target for n in lean.module.graph.nodes if n.op == "call_module"}
    exported_calls = {n.target for n in module.graph.nodes if n.op == "call_module"}
    assert PROBE_MODULE in exported_calls and not calls & SKIPPED_CALLS and not lean.module._forward_pre_hooks
    assert {id(p) for p in lean.module.parameters()} <= {id(p) for p in module.parameters()}  # the same tensors
    start = copy.deepcopy(module.state_dict())
    spec = OptimizerSpec(name="adam", lr=1e-3)
    plain = run_trial(analyzer.loaded, _setup(analyzer, inputs, targets, spec.lr), spec, 8, "fp32")
    after_plain = {k: v.clone() for k, v in module.state_dict().items()}
    module.load_state_dict(start)
    leaned = run_trial(analyzer.loaded, _setup(analyzer, inputs, targets, spec.lr), spec, 8, "fp32", lean)
    assert leaned.trajectory.loss == plain.trajectory.loss and len(plain.trajectory.loss) == 9
    assert leaned.trajectory.grad_norm == plain.trajectory.grad_norm
    for key, value in module.state_dict().items():  # the lean steps trained the exported module's own tensors
        assert torch.equal(value, after_plain[key]), key


def test_a_lean_adam_trial_matches_a_plain_eager_loop() -> None:
    analyzer, inputs, targets, twin, loss_name = _analyzer("mlp_raw_tabular_features")
    spec = OptimizerSpec(name="adam", lr=1e-3)
    outcome = run_trial(
        analyzer.loaded, _setup(analyzer, inputs, targets, spec.lr), spec, 10, "fp32", lean_model(analyzer.loaded)
    )
    loss_fn, opt = resolve_loss(loss_name), torch.optim.Adam(twin.parameters(), lr=1e-3)
    losses, norms = [], []
    for _ in range(10):
        opt.zero_grad()
        loss = per_sample(loss_fn(twin(*inputs), targets)).float().mean()
        losses.append(float(loss.detach()))
        loss.backward()
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in twin.parameters()]))))
        opt.step()
    with torch.no_grad():
        losses.append(float(per_sample(loss_fn(twin(*inputs), targets)).float().mean()))
    assert losses[-1] < losses[0]  # a trajectory worth comparing
    assert outcome.trajectory.loss == pytest.approx(losses, rel=1e-5)
    assert outcome.trajectory.grad_norm == pytest.approx(norms, rel=1e-5)


def test_the_first_step_still_checks_the_inputs() -> None:
    analyzer, inputs, targets, _, _ = _analyzer("mlp_raw_tabular_features")
    lean = lean_model(analyzer.loaded)
    wrong = torch.cat([targets, targets], dim=1)  # [B, 2] for a [B, 1] head: broadcasts, so only a guard sees it
    assert lean.per_sample_loss(inputs, wrong).shape == (targets.shape[0],)  # the lean graph does not check
    spec = OptimizerSpec(name="sgd", lr=1e-3)
    with pytest.raises(AssertionError, match="Guard failed"):
        run_trial(analyzer.loaded, _setup(analyzer, inputs, wrong, spec.lr), spec, 3, "fp32", lean)


def test_each_trial_times_itself_within_the_verify_phase() -> None:
    analyzer, inputs, targets, _, _ = _analyzer("mlp_sgd_lr_above_edge_of_stability")
    options = AnalysisOptions(
        optimizer={"name": "sgd", "lr": 1.5, "momentum": 0.9},
        checks=("standard", "curvature", "verify"),
        verify_steps=25,  # the baseline diverges at step 21
    )
    report = analyzer.run(inputs, targets, options)
    ran = [r for f in report.findings for r in f.remediation if r.verification and r.verification.remediated]
    assert ran
    baselines = {r.verification.baseline.seconds for r in ran if r.verification and r.verification.baseline}
    assert len(baselines) == 1  # one shared baseline trial
    (baseline,) = baselines
    assert baseline is not None and baseline > 0
    assert any(r.verification and r.verification.baseline.non_finite_steps for r in ran)  # it diverged: timed too
    own = {(r.action, r.verification.remediated.seconds) for r in ran if r.verification and r.verification.remediated}
    assert all(seconds is not None and seconds > 0 for _, seconds in own)
    assert len(own) + 1 == report.metrics["verify_trials"]
    assert baseline + sum(s for _, s in own if s is not None) <= report.timings["verify"]
