"""The noise rules: silent on the healthy zoo with the noise check on, silent without it, unsure near the line."""

from __future__ import annotations

import pytest
from gradhealth.diagnostics import AnalysisOptions, analyze_module
from gradhealth.diagnostics.measurements import Measurements
from gradhealth.diagnostics.noise_stats import Interval, NoiseMeasure
from gradhealth.diagnostics.rules import batch_size_wasteful, noisy_layer
from gradhealth.report import severity_at_least

from . import hf_zoo
from .zoo import HEALTHY, ZooCase, by_name

NOISE_RULES = {batch_size_wasteful.RULE_ID, noisy_layer.RULE_ID}


@pytest.mark.parametrize("case", HEALTHY, ids=lambda c: c.name)
def test_healthy_zoo_stays_healthy_with_the_noise_check(case: ZooCase, one_torch_thread: None) -> None:
    model, loss, inputs, targets = case.build()
    options = AnalysisOptions(optimizer=case.optimizer, precision=case.precision, checks=("standard", "noise"))
    report = analyze_module(model, loss, inputs, targets, options)
    assert "gsnr" in report.estimates and not report.skipped, report.skipped
    noisy = [f"{f.rule} {f.message[:200]}" for f in report.findings if f.rule in NOISE_RULES]
    assert not noisy, noisy
    assert not [f for f in report.findings if severity_at_least(f.severity, "warning")]


HF_CASES = [case for case in hf_zoo.HEALTHY if case.name != "llama_vocab_32k"]  # same as llama, 24 s more


@pytest.mark.parametrize("case", HF_CASES, ids=lambda c: c.name)
def test_healthy_hf_zoo_gets_no_noise_finding(case: hf_zoo.HFCase, one_torch_thread: None) -> None:
    """GPT-2, Llama, BERT, ViT, T5, LSTM LM, ResNet: every layer within a decade of the others, no waste."""
    if case.needs_transformers:
        pytest.importorskip("transformers")
    model, loss, inputs, targets = case.build()
    report = analyze_module(model, loss, inputs, targets, AnalysisOptions(checks=("standard", "noise")))
    assert "gsnr" in report.estimates, report.skipped
    assert not [f"{f.rule} {f.message[:200]}" for f in report.findings if f.rule in NOISE_RULES]


def test_noise_rules_need_the_noise_check(one_torch_thread: None) -> None:
    model, loss, inputs, targets = by_name("linear_regression_batch_wasteful").build()
    report = analyze_module(model, loss, inputs, targets, AnalysisOptions(checks=("standard",)))
    assert not report.estimates and not [f for f in report.findings if f.rule in NOISE_RULES]


def test_wasteful_batch_suggests_a_batch_near_twice_the_noise_scale(one_torch_thread: None) -> None:
    model, loss, inputs, targets = by_name("linear_regression_batch_wasteful").build()
    options = AnalysisOptions(checks=("full",), optimizer={"name": "sgd", "lr": 0.1})
    (finding,) = analyze_module(model, loss, inputs, targets, options).findings_for("batch_size_wasteful")
    noise = finding.evidence["gradient_noise_scale"]
    assert isinstance(noise, float) and 4 < noise < 10
    assert finding.remediation[0].params["batch_size"] == 16  # the power of two at or above 2 B_simple
    assert finding.confidence == batch_size_wasteful.CONFIDENT


def _measurements(noise: NoiseMeasure) -> Measurements:
    return Measurements(
        options=AnalysisOptions(checks=("noise",)), batch_size=noise.batch_size, loss=1.0, layers=[], noise=noise
    )


def test_an_interval_across_the_threshold_lowers_confidence() -> None:
    """B_simple = 5 under a batch of 64 (12.8x) but its interval reaches 9 (64/9 < 10): fire, unsure."""
    noise = NoiseMeasure(batch_size=64, estimates={"gradient_noise_scale": Interval(5.0, 3.0, 9.0)})
    (finding,) = batch_size_wasteful.evaluate(_measurements(noise))
    assert finding.confidence == batch_size_wasteful.UNSURE and "may not be wasteful" in finding.message
    noise.estimates["gradient_noise_scale"] = Interval(5.0, 3.0, 6.0)
    (finding,) = batch_size_wasteful.evaluate(_measurements(noise))
    assert finding.confidence == batch_size_wasteful.CONFIDENT
    noise.estimates["gradient_noise_scale"] = Interval(7.0, 3.0, 9.0)  # 64 < 70: silent
    assert not batch_size_wasteful.evaluate(_measurements(noise))


def test_noisy_layer_compares_with_the_other_layers() -> None:
    """A layer 1.3 decades under the others fires; its interval reaching within 10x of them lowers confidence."""
    gsnr = {"a": Interval(0.08, 0.07, 0.09), "b": Interval(0.1, 0.09, 0.11), "c": Interval(0.02, 0.018, 0.022)}
    gsnr["noise"] = Interval(0.004, 0.002, 0.006)
    noise = NoiseMeasure(batch_size=128, layer_gsnr=gsnr)
    (finding,) = noisy_layer.evaluate(_measurements(noise))
    assert finding.layers == ["noise"] and finding.confidence == noisy_layer.CONFIDENT
    gsnr["noise"] = Interval(0.004, 0.002, 0.03)
    (finding,) = noisy_layer.evaluate(_measurements(noise))
    assert finding.confidence == noisy_layer.UNSURE and "treat it as a hint" in finding.message
    gsnr["noise"] = Interval(0.02, 0.01, 0.03)
    assert not noisy_layer.evaluate(_measurements(noise))
