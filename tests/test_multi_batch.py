"""The across-batch merge: t-intervals by hand, majority findings with median severity, generic estimates."""

from __future__ import annotations

import math
from typing import Any

import pytest
from gradhealth.diagnostics.multi_batch import MAX_BATCHES, merge_reports, run_batches, t_interval
from gradhealth.report import Estimate, Finding, LayerStats, ModelInfo, Report


def _report(loss: float, rules: dict[str, Any], gsnr: float | None = None) -> Report:
    """A minimal checkpoint report with the given loss and {rule: severity} findings."""
    findings = [Finding(rule=r, severity=s, title=r, message=r, confidence=0.9) for r, s in rules.items()]
    estimates = {"noise.gsnr_median": Estimate(value=gsnr, samples=8, method="per-sample")} if gsnr else {}
    return Report(
        id="r",
        health="healthy",
        summary="ok",
        model=ModelInfo(format="torch.export", num_parameters=10, num_layers=1, dtype="float32", device="cpu"),
        findings=findings,
        layers=[LayerStats(name="fc", type="Linear", num_parameters=10, grad_norm=loss * 2)],
        metrics={"loss": loss, "global_grad_norm": loss * 2, "per_layer": [1.0]},
        estimates=estimates,
    )


def test_interval_is_the_t_interval_computed_by_hand() -> None:
    losses = [1.0, 2.0, 4.0]
    merged = merge_reports([_report(x, {}, gsnr=x + 1) for x in losses])
    est = merged.estimates["across_batches.loss"]
    mean = 7.0 / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in losses) / 2)
    half = 4.303 * sd / math.sqrt(3)  # t_{0.975, df=2}
    assert est.value == pytest.approx(mean)
    assert (est.low, est.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert (est.samples, est.level, est.method) == (3, 0.95, "across batches")
    assert merged.estimates["across_batches.layer.fc.grad_norm"].value == pytest.approx(2 * mean)
    assert merged.estimates["across_batches.noise.gsnr_median"].value == pytest.approx(mean + 1)
    assert "noise.gsnr_median" in merged.estimates  # the base batch's own estimates stay
    assert merged.metrics["batches"] == 3 and merged.environment["batches"] == "3"


def test_one_value_has_no_interval() -> None:
    est = t_interval([3.0])
    assert (est.value, est.low, est.high, est.samples) == (3.0, None, None, 1)


def test_estimate_only_in_some_batches_is_not_merged() -> None:
    merged = merge_reports([_report(1.0, {}, gsnr=2.0), _report(2.0, {})])
    assert "across_batches.noise.gsnr_median" not in merged.estimates
    assert "across_batches.loss" in merged.estimates


def test_findings_kept_on_a_majority_with_median_severity() -> None:
    reports = [
        _report(1.0, {"dead_relu": "warning", "lr_too_high": "critical"}),
        _report(1.0, {"dead_relu": "critical"}),
        _report(1.0, {"dead_relu": "error", "vanishing_gradient": "error"}),
    ]
    merged = merge_reports(reports)
    assert [f.rule for f in merged.findings] == ["dead_relu"]  # lr_too_high 1 of 3: a minority
    assert merged.findings[0].severity == "error"
    assert merged.findings[0].evidence["batches_fired"] == "3 of 3"
    assert merged.health == "error"


def test_half_is_not_a_majority() -> None:
    merged = merge_reports([_report(1.0, {"dead_relu": "error"}), _report(2.0, {})])
    assert merged.findings == [] and merged.health == "healthy"


def test_one_batch_is_the_plain_report() -> None:
    report = _report(1.0, {"dead_relu": "error"})
    assert merge_reports([report]) is report


def test_batch_count_is_bounded() -> None:
    with pytest.raises(ValueError, match="between 1 and"):
        run_batches(lambda i: _report(1.0, {}), MAX_BATCHES + 1)
    assert run_batches(lambda i: _report(float(i), {}), 2).metrics["batches"] == 2


def test_every_finding_of_a_kept_rule_stays_and_causes_follow_the_kept_rules() -> None:
    base = _report(1.0, {})
    two = [
        Finding(rule="dead_relu", severity="warning", title="a", message="a", layers=["a"], confidence=1.0),
        Finding(
            rule="dead_relu",
            severity="error",
            title="b",
            message="b",
            layers=["b"],
            confidence=1.0,
            caused_by=["lr_too_high"],
        ),
    ]
    first = base.model_copy(update={"findings": two})
    merged = merge_reports([first, _report(2.0, {"dead_relu": "warning"}), _report(3.0, {"lr_too_high": "error"})])
    assert [f.layers for f in merged.findings] == [["a"], ["b"]]  # both of the base's dead_relu findings
    assert {f.severity for f in merged.findings} == {"warning"}  # median of worst per batch: error, warning
    assert merged.findings[1].caused_by == []  # lr_too_high fired on 1 of 3: not kept, not cited


def test_summary_speaks_of_the_kept_findings_and_the_batch_count() -> None:
    merged = merge_reports([_report(1.0, {"dead_relu": "error"}), _report(2.0, {}), _report(3.0, {})])
    assert merged.summary.startswith("Gradients flow well") and "3 batches" in merged.summary


def test_an_input_error_names_the_batch() -> None:
    from gradhealth.diagnostics.errors import InputError

    def run_one(i: int) -> Report:
        if i == 1:
            raise InputError("inputs have 5 features, the model takes 6")
        return _report(1.0, {})

    with pytest.raises(InputError, match="batch 2 of 3: inputs have 5 features"):
        run_batches(run_one, 3)
