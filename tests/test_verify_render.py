"""The verify check in the reports: Markdown states each verification, HTML draws the trials side by side."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gradhealth.report import Finding, ModelInfo, Remediation, Report
from gradhealth.report.render import to_markdown
from gradhealth.report.render_html import to_html
from gradhealth.report.schema import TrialTrajectory, Verification

from tests.sdk.test_html_chromium import CHROMIUM, _count_color, _dom, _screenshot


def _report(with_verification: bool = True) -> Report:
    base = TrialTrajectory(loss=[2.4, 2.3, 2.25, 2.2], grad_norm=[0.5, 0.5, 0.4], evidence={"rule_fires": 1.0})
    fixed = TrialTrajectory(loss=[3.3, 1.6, 0.7, 0.24], grad_norm=[2.0, 1.0, 0.5], evidence={"rule_fires": 0.0})
    verified = Verification(
        status="verified",
        steps=3,
        optimizer={"name": "sgd", "lr": 0.01},
        baseline=base,
        remediated=fixed,
        improved=True,
        criterion="final loss 10% lower, no NaN",
    )
    diverged = Verification(
        status="not_improved",
        steps=3,
        optimizer={"name": "sgd", "lr": 0.01},
        baseline=base,
        remediated=TrialTrajectory(loss=[2.4, 9.0, None], non_finite_steps=1),
        improved=False,
        criterion="final loss 10% lower, no NaN",
    )
    fixes = [
        Remediation(action="fix_bias_and_init", detail="reset the biases", verification=verified),
        Remediation(action="clip_gradients", detail="clip", verification=diverged),
        Remediation(
            action="add_normalization",
            detail="add LayerNorm",
            verification=Verification(status="not_applicable", reason="structural: changes the model's code"),
        ),
    ]
    if not with_verification:
        for fix in fixes:
            fix.verification = None
    finding = Finding(
        rule="dead_relu", severity="warning", title="Dead ReLU units", message="m", confidence=1.0, remediation=fixes
    )
    model = ModelInfo(format="torch.export", num_parameters=10, num_layers=2, dtype="float32", device="cpu")
    return Report(id="r1", health="warning", summary="s", model=model, findings=[finding])


def test_markdown_states_each_verification() -> None:
    md = to_markdown(_report())
    assert "*verified*: loss 3.3 → 0.24 in 3 steps of sgd lr 0.01 with the remedy, 2.4 → 2.2 as uploaded" in md
    assert "improved: yes" in md and "(criterion: final loss 10% lower, no NaN)" in md
    assert "*not improved*: loss 2.4 → diverged" in md
    assert "*not applicable*: structural: changes the model's code" in md
    assert "verified" not in to_markdown(_report(with_verification=False))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_html_draws_both_trials_side_by_side(tmp_path: Path) -> None:
    from gradhealth.report import verify_charts

    page = tmp_path / "verify.html"
    page.write_text(to_html(_report()))
    dom = _dom(tmp_path, page.resolve().as_uri())
    charts = re.findall(r'<svg[^>]*class="gh-chart gh-verify-chart"[^>]*>(.*?)</svg>', dom, re.S)
    assert len(charts) == 2  # the two trials that ran; not_applicable draws nothing
    assert 'class="gh-verify-baseline"' in charts[0] and 'class="gh-verify-remediated"' in charts[0]
    assert 'class="gh-verify-nonfinite"' in charts[1]
    assert 'data-status="not_applicable"' in dom and "structural: changes" in dom

    channels, rows = _screenshot(tmp_path, tmp_path / "verify.png", page.resolve().as_uri())
    bare = tmp_path / "bare.html"
    bare.write_text(to_html(_report(with_verification=False)))
    _, bare_rows = _screenshot(tmp_path, tmp_path / "bare.png", bare.resolve().as_uri())
    # The remedied curves were painted, not only put in the DOM.
    green = _count_color(rows, channels, verify_charts.REMEDY_COLOR, step=1)
    assert green - _count_color(bare_rows, channels, verify_charts.REMEDY_COLOR, step=1) > 100
