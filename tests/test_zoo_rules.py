"""Every rule fires on its pathology, names the right layers, and stays quiet on healthy models."""

from __future__ import annotations

from functools import cache

import pytest
from gradhealth.diagnostics import AnalysisOptions, analyze_module
from gradhealth.diagnostics.rules import RULE_IDS
from gradhealth.report import Report, severity_at_least

from .zoo import HEALTHY, PATHOLOGICAL, ZooCase


@cache
def _report(name: str) -> Report:
    case = next(c for c in PATHOLOGICAL + HEALTHY if c.name == name)
    model, loss, inputs, targets = case.build()
    options = AnalysisOptions(optimizer=case.optimizer, precision=case.precision, checks=case.checks)
    return analyze_module(model, loss, inputs, targets, options)


def _describe(report: Report) -> str:
    return (
        "; ".join(f"{f.severity} {f.rule} {f.layers[:4]} {f.message[:160]}" for f in report.findings) or "no findings"
    )


@pytest.mark.parametrize("case", PATHOLOGICAL, ids=lambda c: c.name)
def test_rule_fires_on_its_pathology(case: ZooCase) -> None:
    report = _report(case.name)
    for rule, prefixes in case.expect.items():
        findings = [f for f in report.findings_for(rule) if severity_at_least(f.severity, "warning")]
        assert findings, f"{rule} did not fire on {case.name}: {_describe(report)}"
        named = [layer for f in findings for layer in f.layers]
        for prefix in prefixes:
            assert any(
                layer == prefix or layer.startswith(prefix + ".") or layer.startswith(prefix + "#") for layer in named
            ), f"{rule} on {case.name} should name {prefix!r}; named {named}"
    assert report.health != "healthy"


@pytest.mark.parametrize("case", HEALTHY, ids=lambda c: c.name)
def test_healthy_model_gets_no_warning(case: ZooCase) -> None:
    """A healthy model is reported healthy: info findings at most (a warning would fail `check --fail-on warning`)."""
    report = _report(case.name)
    serious = [f for f in report.findings if severity_at_least(f.severity, "warning")]
    assert not serious, f"{case.name}: {_describe(report)}"
    assert report.health == "healthy"


def test_zoo_covers_every_rule_and_architecture() -> None:
    fired = {rule for case in PATHOLOGICAL for rule in case.expect}
    assert fired == set(RULE_IDS)
    assert {c.arch for c in PATHOLOGICAL} >= {"mlp", "cnn", "rnn", "lstm", "transformer"}
    assert len(PATHOLOGICAL) >= 20 and len(HEALTHY) >= 6


def test_findings_carry_evidence_thresholds_and_remediation() -> None:
    for case in PATHOLOGICAL:
        for finding in _report(case.name).findings:
            assert finding.evidence and finding.thresholds, (case.name, finding.rule)
            assert finding.remediation and all(r.detail for r in finding.remediation), (case.name, finding.rule)
            assert 0 < finding.confidence <= 1
