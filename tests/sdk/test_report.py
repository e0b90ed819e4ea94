"""The SDK Report: same schema as the engine's, health gate, renderers, and compare()."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from gradhealth.report import Report as EngineReport
from gradhealth.sdk import Comparison, HealthError, Tolerance

import gradhealth

Pair = tuple[gradhealth.Report, gradhealth.Report]


def test_schema_is_the_engines() -> None:
    assert gradhealth.Report.model_json_schema() == EngineReport.model_json_schema()
    assert issubclass(gradhealth.Report, EngineReport)


def test_from_engine_load_and_save_round_trip(reports: dict[str, gradhealth.Report], tmp_path: Path) -> None:
    report = reports["deep_sigmoid_mlp"]
    engine = EngineReport.model_validate(report.model_dump())
    assert gradhealth.Report.from_engine(engine) == report
    assert gradhealth.Report.load(report.save(tmp_path / "r.json")) == report


def test_raise_for_health(reports: dict[str, gradhealth.Report]) -> None:
    sick, healthy = reports["deep_sigmoid_mlp"], reports["deep_relu_mlp_kaiming"]
    assert healthy.raise_for_health("warning") is healthy
    with pytest.raises(HealthError) as caught:
        sick.raise_for_health("error")
    assert [f.rule for f in caught.value.findings] == ["vanishing_gradient"]
    assert "vanishing_gradient" in str(caught.value) and "net.0" in str(caught.value)
    assert sick.raise_for_health("critical") is sick
    with pytest.raises(ValueError, match="unknown severity"):
        sick.raise_for_health("fatal")  # type: ignore[arg-type]


def test_markdown_and_html(reports: dict[str, gradhealth.Report]) -> None:
    report = reports["deep_sigmoid_mlp"]
    assert report.to_markdown().startswith("# gradhealth report") and "vanishing_gradient" in report.to_markdown()
    page = report.to_html()
    assert page.startswith("<!DOCTYPE html>") and "gh-gradient-chart" in page and "gh-activation-chart" in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    fragment = report._repr_html_()
    assert fragment.startswith("<div class='gh-report'>") and "<body" not in fragment
    assert "\nbody{" not in fragment  # styles are scoped: a notebook's page is left alone


def test_junit_parses_and_follows_fail_on(reports: dict[str, gradhealth.Report]) -> None:
    report = reports["deep_sigmoid_mlp"]
    root = ET.fromstring(report.to_junit("error"))
    cases = {case.get("name"): case for case in root.iter("testcase")}
    assert cases["vanishing_gradient"].find("failure") is not None
    assert cases["dead_relu"].find("failure") is None
    assert root.get("failures") == "1" and int(root.get("tests", 0)) == len(cases) >= 11
    lenient = ET.fromstring(report.to_junit("critical"))
    assert lenient.get("failures") == "0"


def test_compare_flags_a_layer_whose_init_was_scaled_up(scaled_reports: Pair) -> None:
    before, after = scaled_reports
    comparison = after.compare(before)
    assert isinstance(comparison, Comparison) and comparison.regressed
    assert (comparison.health_before, comparison.health_after) == ("healthy", after.health)
    assert [f.rule for f in comparison.new] == [f.rule for f in after.findings] and comparison.resolved == []
    scaled = {c.metric: c for c in comparison.layer_changes if c.layer == "net.24"}
    assert scaled["grad_to_weight"].factor is not None and scaled["grad_to_weight"].factor < 0.01
    assert scaled["grad_to_weight"].worse  # the one layer now sits far from every other
    upstream = [c for c in comparison.layer_changes if c.layer == "net.0" and c.metric == "grad_rms"]
    assert upstream and upstream[0].factor is not None and upstream[0].factor > 10
    assert any("health got worse" in r for r in comparison.reasons)
    assert "regressed" in comparison.to_markdown()

    back = before.compare(after)  # the fix, seen the other way round
    assert not back.regressed and [f.rule for f in back.resolved] == [f.rule for f in after.findings]


def test_compare_with_itself_is_quiet(reports: dict[str, gradhealth.Report]) -> None:
    report = reports["deep_sigmoid_mlp"]
    same = report.compare(report)
    assert not same.regressed and not (same.new or same.resolved or same.changed or same.layer_changes)


def test_compare_pairs_moved_findings_and_respects_tolerance(reports: dict[str, gradhealth.Report]) -> None:
    base = reports["deep_sigmoid_mlp"]
    worse = base.model_copy(deep=True)
    finding = next(f for f in worse.findings if f.rule == "vanishing_gradient")
    finding.severity, finding.layers = "critical", finding.layers[:-1]
    worse.health = "critical"
    act = next(layer for layer in worse.layers if layer.activation is not None)
    assert act.activation is not None
    act.activation.saturated_fraction = (act.activation.saturated_fraction or 0.0) + 0.5
    comparison = worse.compare(base)
    assert [c.rule for c in comparison.changed] == ["vanishing_gradient"] and not comparison.new
    assert comparison.changed[0].worse and comparison.regressed
    assert any(c.metric == "saturated_fraction" and c.worse for c in comparison.layer_changes)
    loose = worse.compare(base, Tolerance(increase={"saturated_fraction": 0.9}))
    assert not any(c.metric == "saturated_fraction" for c in loose.layer_changes)


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["checkpoint_report", "run_report"])
def test_reports_without_estimates_render_byte_for_byte_as_before(name: str) -> None:
    """Output captured before estimates, spectra and GSNR were rendered: an old report's pages do not change."""
    report = gradhealth.Report.load(FIXTURES / f"{name}.json")
    assert not report.estimates and report.spectrum is None and all(la.gsnr is None for la in report.layers)
    assert report.to_html() == (FIXTURES / f"{name}.html").read_text()
    assert report.to_markdown() == (FIXTURES / f"{name}.md").read_text()


def _moved(report: gradhealth.Report, name: str, shift: float) -> gradhealth.Report:
    """A copy whose estimate `name` is shifted by `shift`, interval and all."""
    moved = report.model_copy(deep=True)
    e = moved.estimates[name]
    assert e.low is not None and e.high is not None
    e.value, e.low, e.high = e.value + shift, e.low + shift, e.high + shift
    return moved


def test_compare_counts_an_estimate_only_when_its_intervals_part() -> None:
    from .test_render_estimates import estimates_report

    base = estimates_report()  # hessian_max_eigenvalue 123.456 in [118, 130.2]
    assert not base.compare(_moved(base, "hessian_max_eigenvalue", 10.0)).estimate_changes  # within the noise
    sharper = _moved(base, "hessian_max_eigenvalue", 20.0)
    comparison = sharper.compare(base)
    (change,) = comparison.estimate_changes
    assert change.name == "hessian_max_eigenvalue" and change.worse and comparison.regressed
    assert any("hessian_max_eigenvalue 123 [118, 130] at 95% → 143 [138, 150] at 95%" in r for r in comparison.reasons)
    assert "### Estimates" in comparison.to_markdown()
    flatter = base.compare(sharper)  # the other way round: listed, not a regression
    assert [c.worse for c in flatter.estimate_changes] == [False] and not flatter.regressed


def test_compare_estimates_without_direction_or_interval_are_not_regressions() -> None:
    from .test_render_estimates import estimates_report

    base = estimates_report()
    noisier = _moved(base, "gradient_noise_scale", 0.001)  # no agreed direction: reported, not judged
    noisier.estimates["gsnr"].value = 0.01  # no interval on either side: nothing can be said
    comparison = noisier.compare(base)
    assert [(c.name, c.worse) for c in comparison.estimate_changes] == [("gradient_noise_scale", False)]
    assert not comparison.regressed
    strict = noisier.compare(base, Tolerance(estimate_worse={"gradient_noise_scale": "up"}))
    assert strict.regressed and strict.estimate_changes[0].worse
    assert not base.compare(base).estimate_changes
