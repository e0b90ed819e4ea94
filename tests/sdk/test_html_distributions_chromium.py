"""The run report's distribution band charts in real headless Chromium: well-formed SVG, bands laid out and painted."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html import unescape
from pathlib import Path

from gradhealth.report import Timeline
from gradhealth.report.schema import LayerDistribution

from .test_html_chromium import _dom, _screenshot, pytestmark  # noqa: F401  (skipped without chromium)
from .test_run_render import run_report

LEVELS = [0.0, 0.0668, 0.1587, 0.3085, 0.5, 0.6915, 0.8413, 0.9332, 1.0]
SIGMAS = [-3.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0]
_MEASURE = """<pre id="boxes"></pre><script>
const out = [...document.querySelectorAll("svg.gh-dist-chart .gh-band, svg.gh-dist-chart .gh-median")].map(
  e => { const b = e.getBBox(); return [e.getAttribute("class"), b.width, b.height]; });
document.getElementById("boxes").textContent = JSON.stringify(out);
</script>"""


def _distribution(scale: float) -> LayerDistribution:
    """A layer whose values spread 10x wider over 50 steps, centred on 0: bands that fan out."""
    steps = list(range(0, 500, 10))
    grad = [[scale * (1 + 9 * i / 49) * s for s in SIGMAS] for i in range(50)]
    weight: list[list[float | None]] = [[1.0 + 0.1 * s for s in SIGMAS] for _ in steps]
    weight[7] = [None] * 9  # a step with no finite weight: left out of the bands
    return LayerDistribution(
        steps=steps,
        quantiles=LEVELS,
        grad=grad,
        weight=weight,
        grad_zeros=[0.0] * 50,
        grad_nonfinite=[0.0] * 50,
        weight_zeros=[0.0] * 50,
        weight_nonfinite=[0.0] * 50,
        count=[100.0] * 50,
    )


def test_distribution_bands_render_in_chromium(artifacts_dir: Path, tmp_path: Path) -> None:
    report = run_report()
    assert report.timeline is not None
    timeline = Timeline(**{**report.timeline.model_dump(), "distributions": {}})
    timeline.distributions = {"fc1": _distribution(1e-3), "fc2": _distribution(1.0)}
    html = run_report(timeline=timeline).to_html()
    charts = re.findall(r'<svg[^>]*class="gh-chart gh-dist-chart".*?</svg>', html, re.S)
    assert len(charts) == 4  # 2 layers x (gradient, weight)
    for chart in charts:
        svg = ET.fromstring(chart)  # well-formed on its own
        bands = [e for e in svg.iter() if e.get("class") == "gh-band"]
        assert len(bands) == 4 and all(len(b.get("points", "").split()) in (98, 100) for b in bands)
    page = artifacts_dir / "report_run_distributions.html"
    page.write_text(html)
    dom = _dom(tmp_path, page.resolve().as_uri())  # the real page, CSP and all: no console errors
    assert "gh-dist-chart" in dom and "<script" not in dom
    # The page forbids scripts, so the same fragment is measured in a page of the test's own.
    probe = tmp_path / "measure.html"
    probe.write_text(
        f"<!DOCTYPE html><html><body>{run_report(timeline=timeline)._repr_html_()}{_MEASURE}</body></html>"
    )
    boxes = re.search(r'<pre id="boxes">(.*?)</pre>', _dom(tmp_path, probe.resolve().as_uri()), re.S)
    assert boxes is not None and boxes.group(1), "the measuring script did not run"
    measured = json.loads(unescape(boxes.group(1)))
    bands = [box for box in measured if box[0] == "gh-band"]
    assert len(bands) == 16 and all(width > 300 and height > 3 for _, width, height in bands)
    widest = max(height for _, _, height in bands)  # the min-max band of the fanning gradients fills the plot
    assert widest > 60
    channels, rows = _screenshot(tmp_path, artifacts_dir / "report_run_distributions.png", page.resolve().as_uri())
    bluish = sum(
        1
        for row in rows[::2]
        for i in range(0, len(row), channels * 2)
        if row[i + 2] > row[i] + 40 and row[i + 2] > row[i + 1] + 10
    )
    assert bluish > 2000  # the bands were painted, not only laid out
