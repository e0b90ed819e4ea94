"""The verify check: trials match plain-torch training, pathologies are verified fixed, healthy models cost nothing."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, Analyzer
from gradhealth.diagnostics.export import PackageMetadata, export_per_sample_loss
from gradhealth.diagnostics.loading import from_exported_program
from gradhealth.diagnostics.verify import effect, judge, rank_by_verification, refuted, verify_findings
from gradhealth.diagnostics.verify_trial import TrialOutcome
from gradhealth.report import Finding, Remediation, Report
from gradhealth.report.schema import TrialTrajectory, Verification
from pydantic import ValidationError

from tests.zoo import by_name


def _analyzer(name: str) -> tuple[Analyzer, tuple[torch.Tensor, ...], torch.Tensor, torch.nn.Module]:
    model, loss, inputs, targets = by_name(name).build()
    twin = copy.deepcopy(model)
    ep = export_per_sample_loss(model, loss, inputs, targets)
    meta = PackageMetadata(returns_loss=True, num_inputs=len(inputs), loss=str(loss))
    return Analyzer(from_exported_program(ep, meta, None)), inputs, targets, twin


def _sgd_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int) -> list[float]:
    """Plain full-batch momentum SGD on the MSE, the loss before each step and after the last."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y, reduction="none").flatten(1).mean(1).mean()
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append(float(F.mse_loss(model(x), y, reduction="none").flatten(1).mean(1).mean()))
    return losses


def test_lr_trial_matches_plain_torch_and_is_verified() -> None:
    analyzer, inputs, targets, twin = _analyzer("mlp_sgd_lr_above_edge_of_stability")
    options = AnalysisOptions(
        optimizer={"name": "sgd", "lr": 1.5, "momentum": 0.9},
        checks=("standard", "curvature", "verify"),
        verify_steps=12,
    )
    state = {k: v.clone() for k, v in analyzer.loaded.module.state_dict().items()}
    report = analyzer.run(inputs, targets, options)
    (finding,) = report.findings_for("lr_too_high")
    top = finding.remediation[0]
    v = top.verification
    assert top.action == "lower_lr" and v is not None and v.baseline and v.remediated
    expected_base = _sgd_losses(copy.deepcopy(twin), inputs[0], targets, 1.5, 12)
    finite = [x for x in v.baseline.loss if x is not None]
    assert finite == pytest.approx(expected_base[: len(finite)], rel=1e-3)  # baseline = the user's set-up
    expected_rem = _sgd_losses(copy.deepcopy(twin), inputs[0], targets, float(v.optimizer["lr"]), 12)
    assert v.remediated.loss == pytest.approx(expected_rem, rel=1e-3, abs=1e-6)
    assert v.status == "verified" and v.improved and v.criterion
    assert v.remediated.non_finite_steps == 0 and len(v.remediated.grad_norm) == 12
    assert report.metrics["verify_trials"] == 2 and report.timings["verify"] > 0
    for key, value in analyzer.loaded.module.state_dict().items():  # the model is restored after the trials
        torch.testing.assert_close(value, state[key])


def test_dead_relu_bias_fix_is_verified_and_ranked_first() -> None:
    analyzer, inputs, targets, _ = _analyzer("mlp_dead_relu_negative_bias")
    report = analyzer.run(inputs, targets, AnalysisOptions(checks=("standard", "verify"), verify_steps=20))
    (finding,) = report.findings_for("dead_relu")
    first = finding.remediation[0]
    assert first.action == "fix_bias_and_init"
    v = first.verification
    assert v is not None and v.status == "verified" and v.baseline and v.remediated
    assert v.baseline.evidence["rule_fires"] == 1.0 and v.remediated.evidence["rule_fires"] == 0.0
    base_dead, rem_dead = v.baseline.evidence["dead_fraction"], v.remediated.evidence["dead_fraction"]
    assert base_dead is not None and rem_dead is not None and rem_dead < 0.5 < base_dead  # 3/4 dead before
    assert v.baseline.evidence["worst_fraction"] == base_dead
    structural = [r for r in finding.remediation if r.action == "add_normalization"]
    assert structural and structural[0].verification and structural[0].verification.status == "not_applicable"


def test_fp16_loss_scale_lets_the_gradients_through() -> None:
    analyzer, inputs, targets, twin = _analyzer("mlp_fp16_underflow_converged")
    loss = F.mse_loss(twin(inputs[0]), targets, reduction="none").flatten(1).mean(1).mean()
    grads = torch.autograd.grad(loss, list(twin.parameters()))
    assert all(bool((g.half() == 0).all()) for g in grads)  # plain fp16 rounding flushes every gradient
    report = analyzer.run(inputs, targets, AnalysisOptions(precision="fp16", checks=("verify",), verify_steps=5))
    (finding,) = report.findings_for("fp16_underflow")
    top = finding.remediation[0]
    v = top.verification
    assert top.action == "use_loss_scaling" and v is not None and v.baseline and v.remediated
    assert v.baseline.grad_norm == [0.0] * 5 and v.baseline.evidence["fp16_flushed_fraction"] == 1.0
    assert v.remediated.evidence["fp16_flushed_fraction"] == 0.0 and v.status == "verified"


def test_healthy_model_runs_no_trial() -> None:
    analyzer, inputs, targets, _ = _analyzer("deep_relu_mlp_kaiming")
    report = analyzer.run(inputs, targets, AnalysisOptions(checks=("standard", "verify")))
    assert report.health == "healthy"
    assert "verify" not in report.timings and "verify_trials" not in report.metrics
    assert all(r.verification is None for f in report.findings for r in f.remediation)


def _finding(*remediations: Remediation) -> Finding:
    return Finding(
        rule="dead_relu", severity="warning", title="t", message="m", confidence=1.0, remediation=list(remediations)
    )


def test_bad_params_fail_with_a_reason_and_the_budget_is_kept() -> None:
    analyzer, inputs, targets, _ = _analyzer("mlp_dead_relu_negative_bias")
    finding = _finding(
        Remediation(action="reinitialize", detail="", params={"layers": ["ghost.*"], "scheme": "kaiming_normal"}),
        Remediation(action="standardize_inputs", detail="", params={"mean": [0.0] * 5, "std": [1.0] * 5}),
        Remediation(action="lower_lr", detail="", params={"lr": -3.0}),
        Remediation(action="lower_lr", detail="", params={"lr": 1e-3}),
        Remediation(action="scale_lr", detail="", params={"lr": 0.5}),
    )
    options = AnalysisOptions(checks=("standard", "verify"), verify_steps=3, verify_max_trials=1)
    phases: list[str] = []
    stats = verify_findings(
        analyzer.loaded, [finding], inputs, targets, options, lambda *a: ([], {}), lambda p, f: phases.append(p)
    )
    results = [(r.action, r.verification) for r in finding.remediation]
    reasons = " | ".join(v.reason or "" for _, v in results if v is not None)
    assert "'ghost.*' is not in the model" in reasons and "32 features along dim 1" in reasons
    assert "params.lr must be > 0" in reasons and "trial budget spent (1 remediation trials" in reasons
    statuses = [(a, v.status if v else None) for a, v in results]
    assert statuses[0] in (("lower_lr", "verified"), ("lower_lr", "not_improved"))  # the one trial ranks first
    assert [s for _, s in statuses].count("failed") == 3
    assert stats.trials == 2 and stats.steps == 6 and "verify" in phases  # baseline + one remedy, 3 steps each


def test_absurd_trial_sizes_are_refused() -> None:
    with pytest.raises(ValidationError, match="verify_steps"):
        AnalysisOptions(checks=("verify",), verify_steps=10**9)
    with pytest.raises(ValidationError, match="verify_max_trials"):
        AnalysisOptions(checks=("verify",), verify_max_trials=0)
    assert not AnalysisOptions(checks=("full",)).runs("verify")  # trials only when named


def test_cli_runs_verify(tmp_path: Path) -> None:
    import gradhealth

    model, loss, inputs, targets = by_name("mlp_dead_relu_negative_bias").build()
    package = gradhealth.package(model, loss, inputs, targets, tmp_path / "model.pt2")
    batch = gradhealth.save_batch(tmp_path / "batch.safetensors", inputs, targets)
    args = ["analyze", "--model", str(package), "--batch", str(batch), "--checks", "standard,verify"]
    done = subprocess.run([sys.executable, "-m", "gradhealth.cli", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = Report.model_validate(json.loads(done.stdout))
    top = report.findings_for("dead_relu")[0].remediation[0]
    assert top.verification is not None and top.verification.status == "verified"
    bad = subprocess.run(
        [sys.executable, "-m", "gradhealth.cli", *args[:-1], "standard,verify,forever"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "checks" in bad.stderr


def test_cli_verifies_a_run_reports_findings_on_a_checkpoint(tmp_path: Path) -> None:
    from gradhealth.report import ModelInfo

    import gradhealth

    model, loss, inputs, targets = by_name("mlp_sgd_lr_above_edge_of_stability").build()
    package = gradhealth.package(model, loss, inputs, targets, tmp_path / "model.pt2")
    batch = gradhealth.save_batch(tmp_path / "batch.safetensors", inputs, targets)
    diverged = Finding(
        rule="loss_divergence",
        severity="error",
        title="Loss diverged",
        message="m",
        step=120,
        confidence=1.0,
        remediation=[
            Remediation(action="lower_lr", detail="lower the lr", params={"lr": 0.15}),
            Remediation(action="restore_and_skip", detail="restore a checkpoint"),
        ],
    )
    info = ModelInfo(format="run", num_parameters=0, num_layers=0, dtype="float32", device="cpu")
    run = Report(id="run1", kind="run", health="error", summary="s", model=info, findings=[diverged])
    (tmp_path / "run.json").write_text(run.model_dump_json())
    args = ["analyze", "--model", str(package), "--batch", str(batch), "--optimizer", "sgd", "--lr", "1.5"]
    args += ["--momentum", "0.9", "--verify-report", str(tmp_path / "run.json")]
    done = subprocess.run([sys.executable, "-m", "gradhealth.cli", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    verified = Report.model_validate(json.loads(done.stdout))
    assert verified.kind == "run" and verified.id == "run1"
    first, second = verified.findings[0].remediation
    assert first.action == "lower_lr" and first.verification and first.verification.status == "verified"
    assert first.verification.optimizer["lr"] == 0.15 and first.verification.baseline
    assert first.verification.baseline.non_finite_steps == 1  # lr 1.5 with momentum diverges on this model
    assert second.verification and second.verification.status == "not_applicable"
    (tmp_path / "bad.json").write_text('{"id": 3}')
    bad = subprocess.run(
        [sys.executable, "-m", "gradhealth.cli", *args[:-1], str(tmp_path / "bad.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "is not a gradhealth report" in bad.stderr


def test_a_partly_applicable_action_says_what_was_left_out() -> None:
    analyzer, inputs, targets, _ = _analyzer("mlp_dead_relu_negative_bias")
    fix = Remediation(
        action="use_relu_and_kaiming_init", detail="", params={"layers": ["net.0"], "scheme": "kaiming_normal"}
    )
    options = AnalysisOptions(checks=("verify",), verify_steps=3)
    verify_findings(analyzer.loaded, [_finding(fix)], inputs, targets, options, lambda *a: ([], {}), lambda *a: None)
    assert fix.verification is not None and fix.verification.status in ("verified", "not_improved")
    assert "only the Kaiming initialisation was applied" in (fix.verification.reason or "")


def _outcome(loss: list[float | None], **evidence: float) -> TrialOutcome:
    traj = TrialTrajectory(loss=loss, grad_norm=[1.0] * (len(loss) - 1), evidence=dict(evidence))
    first, last = loss[0], loss[-1]
    decrease = 1 - last / first if first and last is not None else None
    return TrialOutcome(traj, len(loss) - 1, decrease)


def test_a_data_remedy_is_judged_by_the_symptoms_its_finding_causes() -> None:
    """Standardising the data silences its own rule trivially: its symptoms (saturation) must stop instead."""
    finding = _finding()
    base = _outcome([1.0, 0.95], rule_fires=1.0, symptoms_fire=1.0)
    fixed = _outcome([1.0, 0.93], rule_fires=0.0, symptoms_fire=0.0)  # 2% lower only: the loss bar is not met
    assert judge(base, fixed, finding, units_changed=False, data_changed=True)
    still = _outcome([1.0, 0.93], rule_fires=0.0, symptoms_fire=1.0)
    assert not judge(base, still, finding, units_changed=False, data_changed=True)  # own rule alone: not enough
    worse = _outcome([1.0, 0.97], rule_fires=0.0, symptoms_fire=0.0)
    assert not judge(base, worse, finding, units_changed=False, data_changed=True)  # final loss higher
    no_symptoms = _outcome([1.0, 0.93], rule_fires=0.0)
    assert not judge(_outcome([1.0, 0.95], rule_fires=1.0), no_symptoms, finding, False, True)


def _tried(rule: str, severity: str, *statuses: str) -> Finding:
    fixes = [
        Remediation(action="lower_lr", detail="", params={"lr": 0.1}, verification=Verification(status=s))  # type: ignore[arg-type]
        for s in statuses
    ]
    return Finding(rule=rule, severity=severity, title="t", message="m", confidence=1.0, remediation=fixes)  # type: ignore[arg-type]


def test_findings_whose_tried_remedies_all_failed_rank_behind_verified_ones() -> None:
    cause = _tried("cause", "error", "not_improved", "failed")
    structural = _tried("structural", "error", "not_applicable")
    symptom = _tried("symptom", "warning", "verified", "not_improved")
    other = _tried("other", "warning", "not_improved")
    info = _tried("info_rule", "info")
    ordered = rank_by_verification([cause, structural, symptom, other, info])
    assert [f.rule for f in ordered] == ["structural", "symptom", "cause", "other", "info_rule"]
    assert not refuted(symptom) and not refuted(structural) and refuted(cause) and refuted(other)
    healthy_order = [structural, symptom]
    assert rank_by_verification(healthy_order) == healthy_order  # nothing refuted: the rules' order stands


def test_the_verified_symptom_fix_ranks_above_the_refuted_cause() -> None:
    """Saturated sigmoid MLP: re-initialising every layer (poor_initialization) ends above the baseline's loss;
    rescaling the saturating layer's pre-activations (saturated_activation) trains: it must come first."""
    analyzer, inputs, targets, twin = _analyzer("sigmoid_mlp_std1_saturated")
    report = analyzer.run(inputs, targets, AnalysisOptions(checks=("standard", "verify"), verify_steps=30))
    top = report.findings[0]
    assert top.rule == "saturated_activation" and top.remediation[0].verification is not None
    assert top.remediation[0].verification.status == "verified"
    (cause,) = report.findings_for("poor_initialization")
    v = cause.remediation[0].verification
    assert v is not None and v.status == "not_improved" and v.baseline and v.remediated
    x = inputs[0]
    opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    for _ in range(30):  # the baseline, by plain torch: the std-1 model memorises the batch
        opt.zero_grad()
        F.cross_entropy(twin(x), targets).backward()
        opt.step()
    with torch.no_grad():
        baseline_final = float(F.cross_entropy(twin(x), targets))
    assert v.baseline.loss[-1] == pytest.approx(baseline_final, rel=1e-3)
    assert v.remediated.loss[-1] > baseline_final  # the cause's remedy ends higher: refuted by the measurement


def test_remedies_rank_by_the_loss_they_reach_from_the_common_start() -> None:
    """A clip that takes an exploded loss from 1e10 to 1e3 falls further in relative terms than a rescale that
    starts at 24 and ends at 0.13, but ends 10^4 higher: the loss reached decides."""
    base = _outcome([1.4e10, None])
    clip_only = _outcome([1.4e10, 1318.0])
    rescale_and_clip = _outcome([24.0, 0.13])
    assert clip_only.relative_decrease is not None and rescale_and_clip.relative_decrease is not None
    assert clip_only.relative_decrease > rescale_and_clip.relative_decrease
    assert effect(base, rescale_and_clip, False) > effect(base, clip_only, False)
    assert effect(base, rescale_and_clip, False) == pytest.approx(math.log(1.4e10 / 0.13))
    other_units = _outcome([3.0, 0.3])  # standardised targets: measured from its own start
    assert effect(base, other_units, True) == pytest.approx(math.log(10.0))
    assert effect(base, _outcome([24.0, None]), False) == -math.inf
