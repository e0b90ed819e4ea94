"""Noise and curvature statistics in the renderers: the estimates table, per-layer GSNR with whiskers and the
Hessian spectrum, built by hand from the schema (the engine's numbers are tested elsewhere)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest
from gradhealth.report import CurvatureSpectrum, Estimate, LayerStats, ModelInfo, estimate_charts
from gradhealth.report.schema import LayerDistribution

import gradhealth

SVG = "{http://www.w3.org/2000/svg}"
EVIL = "<script>alert(1)</script>"
# Depth order, values spanning five decades; "head" has no GSNR (it was not measured), "norm" has no interval.
GSNR = {
    "embed": Estimate(value=52.0, low=31.0, high=80.0, samples=64, method="bootstrap over samples"),
    "blocks.0.attn": Estimate(value=3.2, low=1.9, high=4.4, samples=64, method="bootstrap over samples"),
    "norm": Estimate(value=0.45, samples=64, method="plug-in"),
    "blocks.1.mlp": Estimate(value=0.021, low=0.0, high=0.05, samples=64, method="bootstrap over samples"),
    "fc": Estimate(value=0.0009, low=0.0004, high=0.0017, samples=64, method="bootstrap over samples"),
}
ESTIMATES = {
    "hessian_max_eigenvalue": Estimate(
        value=123.456, low=118.0, high=130.2, samples=30, method="lanczos residual bound"
    ),
    "hessian_trace": Estimate(value=2.5e5, low=2.1e5, high=2.9e5, level=0.9, samples=100, method="hutchinson"),
    "gradient_noise_scale": Estimate(value=0.00042, low=0.0003, high=0.0006, samples=64, method="bootstrap"),
    "across_batches.gsnr": Estimate(value=1.7, low=0.9, high=2.5, samples=8, method="t interval over batches"),
    "gsnr": Estimate(value=0.8, samples=64, method="plug-in"),
}
TOP = [120.0, 45.0, 12.0, 3.1, 0.8]
LEVELS = [0.0, 0.0668, 0.1587, 0.3085, 0.5, 0.6915, 0.8413, 0.9332, 1.0]


def _sketch(scale: float) -> LayerDistribution:
    """A one-step sketch of a normal-looking layer whose spread is `scale` (the quantiles at ±k sigma)."""
    grad: list[float | None] = [scale * z for z in (-4.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 4.0)]
    weight: list[float | None] = [0.1 * z for z in (-3.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0)]
    return LayerDistribution(
        steps=[0], quantiles=LEVELS, grad=[grad], weight=[weight], grad_zeros=[25.0], count=[100.0]
    )


DISTRIBUTIONS = {name: _sketch(0.01 * (i + 1)) for i, name in enumerate(GSNR)}


def _layer(name: str, gsnr: Estimate | None) -> LayerStats:
    return LayerStats(name=name, type="Linear", num_parameters=100, grad_norm=0.1, grad_rms=0.01, gsnr=gsnr)


def estimates_report(
    estimates: dict[str, Estimate] | None = None, spectrum: CurvatureSpectrum | None = None
) -> gradhealth.Report:
    """A checkpoint report carrying every kind of statistic: estimates, per-layer GSNR and a spectrum."""
    grid = [-5.0 + 1.5 * i for i in range(101)]
    density = [math.exp(-((g - 2.0) ** 2) / 20.0) + 1e-6 for g in grid]
    layers = [_layer(name, gsnr) for name, gsnr in GSNR.items()] + [_layer("head", None)]
    return gradhealth.Report(
        id="est_1",
        created_at=datetime(2025, 1, 2, 3, 4, tzinfo=UTC),
        health="healthy",
        summary="Noise and curvature measured.",
        model=ModelInfo(format="pytorch", num_parameters=600, num_layers=6, dtype="float32", device="cpu"),
        layers=layers,
        estimates=ESTIMATES if estimates is None else estimates,
        spectrum=CurvatureSpectrum(top_eigenvalues=TOP, density_grid=grid, density=density)
        if spectrum is None
        else spectrum,
        distributions=DISTRIBUTIONS,
    )


def _chart(page: str, css_class: str) -> ET.Element:
    """The one chart of a class, parsed as XML: the inline SVG must be well-formed on its own."""
    (svg,) = re.findall(rf'<svg[^>]*class="gh-chart {css_class}".*?</svg>', page, re.S)
    return ET.fromstring(svg)


def test_markdown_estimates_table_gsnr_column_and_eigenvalues() -> None:
    md = estimates_report().to_markdown()
    assert "## Estimates" in md and "| estimate | value | interval | samples | method |" in md
    assert "| `hessian_max_eigenvalue` | 123 | [118, 130] at 95% | 30 | lanczos residual bound |" in md
    assert "| `hessian_trace` | 2.50e+05 | [2.10e+05, 2.90e+05] at 90% | 100 | hutchinson |" in md
    assert "| `gsnr` | 0.8 | – | 64 | plug-in |" in md
    names = re.findall(r"^\| `([^`]+)` \| [^|]+ \| [^|]+ \| \d+ \|", md.split("## Distributions")[0], re.M)
    assert names == [*(n for n in ESTIMATES if n != "across_batches.gsnr"), "across_batches.gsnr"]  # one batch first
    assert "Top Hessian eigenvalues: 120, 45, 12, 3.1, 0.8." in md
    assert "GSNR [interval] |" in md
    assert "| `fc` | Linear | 0.1 | – | – |  |  |  | 9.00e-04 [4.00e-04, 0.0017] |" in md
    assert "| `norm` | Linear | 0.1 | – | – |  |  |  | 0.45 |" in md
    assert "| `head` | Linear | 0.1 | – | – |  |  |  |  |" in md
    assert md.index("## Estimates") < md.index("## Layers")


def test_markdown_table_cells_survive_pipes_and_newlines() -> None:
    odd = {"a|b": Estimate(value=1.0, method="x | y\nz")}
    md = estimates_report(estimates=odd).to_markdown()
    assert "| `a\\|b` | 1 | – | 1 | x \\| y z |" in md


class _Checker(HTMLParser):
    """Every non-void tag closes in order, and no script element appears."""

    VOID = {"meta", "br", "img", "input", "hr", "link", "col", "wbr", "source"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-3:]}"
        self.stack.pop()


def test_html_table_and_charts_present() -> None:
    page = estimates_report().to_html()
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [] and "script" not in checker.tags
    table = re.search(r"<table class='gh-estimates'>.*?</table>", page, re.S)
    assert table is not None
    assert "<td><code>hessian_max_eigenvalue</code></td><td class='num'>123</td>" in table.group(0)
    assert "[118, 130] at 95%" in table.group(0) and "[2.10e+05, 2.90e+05] at 90%" in table.group(0)
    assert "<td>lanczos residual bound</td>" in table.group(0)
    assert "<th>GSNR [interval]</th>" in page and "9.00e-04 <small>[4.00e-04, 0.0017]</small>" in page
    for css in ("gh-gsnr-chart", "gh-spectrum-chart", "gh-density-chart"):
        chart = _chart(page, css)
        assert chart.get("role") == "img" and chart.get("aria-label")


def test_gsnr_chart_one_whisker_per_interval_and_dots_ordered_like_the_values() -> None:
    chart = _chart(estimates_report().to_html(), "gh-gsnr-chart")
    assert "log scale" in (chart.get("aria-label") or "")  # five decades
    whiskers = {w.get("data-layer"): w for w in chart.iter(f"{SVG}path") if w.get("class") == "gh-whisker"}
    assert list(whiskers) == [name for name, e in GSNR.items() if e.low is not None]  # depth order, norm has none
    dots = [c for c in chart.iter(f"{SVG}circle") if c.get("class") == "gh-gsnr-point"]
    assert [d.get("data-layer") for d in dots] == list(GSNR)  # one per layer with a GSNR, in depth order
    ys = [float(d.get("cy", "nan")) for d in dots]
    assert ys == sorted(ys) and len(set(ys)) == len(ys)  # input side at the top
    xs = [float(d.get("cx", "nan")) for d in dots]
    by_value = sorted(range(len(dots)), key=lambda i: list(GSNR.values())[i].value)
    assert sorted(range(len(xs)), key=xs.__getitem__) == by_value  # positions ordered like the values
    for dot, name in zip(dots, GSNR, strict=True):
        whisker = whiskers.get(name)
        if whisker is None:
            continue
        ends = [float(x) for x in re.findall(r"M(-?[\d.]+),", whisker.get("d", ""))]
        cx, cy = float(dot.get("cx", "nan")), float(dot.get("cy", "nan"))
        assert min(ends) <= cx <= max(ends) and max(ends) - min(ends) > 1, name  # the interval brackets its value
        assert f",{cy:.1f}" in (whisker.get("d") or "")  # on the dot's row
    # log scale: equal ratios, equal distances (52/3.2 vs 0.45/0.021 checked through log10)
    per_decade = (xs[0] - xs[1]) / math.log10(52.0 / 3.2)
    assert (xs[2] - xs[3]) / math.log10(0.45 / 0.021) == pytest.approx(per_decade, rel=0.02)


def test_gsnr_chart_is_linear_when_the_values_stay_within_two_decades() -> None:
    assert estimate_charts.scale_for([0.5, 2.0, 9.0], [], 0, 100).log is False
    assert estimate_charts.scale_for([0.01, 2.0], [], 0, 100).log is True


def test_spectrum_stems_and_density_line() -> None:
    page = estimates_report().to_html()
    stems = _chart(page, "gh-spectrum-chart")
    dots = [c for c in stems.iter(f"{SVG}circle") if c.get("class") == "gh-eigenvalue"]
    assert len(dots) == len(TOP) and [d.findtext(f"{SVG}title") for d in dots][0] == "eigenvalue 1: 120"
    ys = [float(d.get("cy", "nan")) for d in dots]
    assert ys == sorted(ys)  # largest first: highest on the page first
    lines = [line for line in stems.iter(f"{SVG}line") if line.get("class") == "gh-stem"]
    assert len(lines) == len(TOP) and all(float(s.get("y1", 0)) > float(s.get("y2", 0)) for s in lines)
    density = _chart(page, "gh-density-chart")
    (path,) = [p for p in density.iter(f"{SVG}path") if p.get("class") == "gh-density"]
    assert len(re.findall(r"(-?[\d.]+),(-?[\d.]+)", path.get("d", ""))) == 101


def test_negative_eigenvalues_stem_down_from_zero() -> None:
    spectrum = CurvatureSpectrum(top_eigenvalues=[4.0, 1.0, -2.0])
    stems = _chart(estimates_report(spectrum=spectrum).to_html(), "gh-spectrum-chart")
    lines = [line for line in stems.iter(f"{SVG}line") if line.get("class") == "gh-stem"]
    base = {float(s.get("y1", 0)) for s in lines}
    assert len(base) == 1 and float(lines[-1].get("y2", 0)) > base.pop()  # below the zero line
    assert "gh-density-chart" not in estimates_report(spectrum=spectrum).to_html()  # no density, no chart


def test_nothing_rendered_without_the_data() -> None:
    bare = estimates_report(estimates={}, spectrum=CurvatureSpectrum())
    bare.layers = [_layer("fc", None)]
    page, md = bare.to_html(), bare.to_markdown()
    for absent in ("Estimates", "gh-gsnr-chart", "gh-spectrum", "GSNR", "Curvature spectrum"):
        assert absent not in page, absent
    assert "Estimates" not in md and "GSNR" not in md and "eigenvalues" not in md


def test_estimate_keys_methods_and_layer_names_are_escaped() -> None:
    """A report may come from stored JSON: no string in it reaches the page as markup."""
    evil = {EVIL: Estimate(value=1.0, low=0.5, high=2.0, method=EVIL + '"onload="x')}
    report = estimates_report(estimates=evil)
    report.layers[0].name = EVIL
    page = report.to_html()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '"onload="x' not in page and "&quot;onload=&quot;x" in page
    chart = _chart(page, "gh-gsnr-chart")  # still well-formed XML with the name in an attribute
    assert any(w.get("data-layer") == EVIL for w in chart.iter(f"{SVG}path"))


def test_run_reports_render_estimates_too() -> None:
    from .test_run_render import run_report

    report = run_report()
    report.estimates = {"gradient_noise_scale": ESTIMATES["gradient_noise_scale"]}
    assert "<table class='gh-estimates'>" in report.to_html()
    assert (
        "| `gradient_noise_scale` | 4.20e-04 | [3.00e-04, 6.00e-04] at 95% | 64 | bootstrap |" in report.to_markdown()
    )


def test_junit_carries_the_estimates_as_suite_properties() -> None:
    root = ET.fromstring(estimates_report(estimates={**ESTIMATES, EVIL: Estimate(value=2.0)}).to_junit())
    suite = root.find("testsuite")
    assert suite is not None and suite[0].tag == "properties"
    props = {p.get("name"): p.get("value") for p in suite[0]}
    assert props["estimate.hessian_max_eigenvalue"] == "123 [118, 130] at 95% (30 samples, lanczos residual bound)"
    assert props["estimate.gsnr"] == "0.8 (64 samples, plug-in)" and props[f"estimate.{EVIL}"] == "2 (1 sample)"
    bare = ET.fromstring(estimates_report(estimates={}).to_junit())
    assert bare.find("testsuite/properties") is None  # reports without estimates: JUnit as before


def test_edge_cases_render() -> None:
    """Non-finite numbers, one-sided intervals, a lone layer and a misaligned density still give valid pages."""
    odd = {
        "hessian_trace": Estimate(value=math.inf),
        "gsnr": Estimate(value=math.nan, high=2.0),
        "norm_test_ratio": Estimate(value=0.0, low=0.0, high=0.0),
    }
    spectrum = CurvatureSpectrum(top_eigenvalues=[math.nan, 5.0], density_grid=[0.0, 1.0], density=[1.0])
    report = estimates_report(estimates=odd, spectrum=spectrum)
    report.layers = [_layer("only", Estimate(value=0.3, low=-0.1, high=0.7)), _layer("bad", Estimate(value=math.inf))]
    page, md = report.to_html(), report.to_markdown()
    assert "| `hessian_trace` | inf | – |" in md and "| `gsnr` | nan | [–, 2] at 95% |" in md
    chart = _chart(page, "gh-gsnr-chart")
    assert "linear scale" in (chart.get("aria-label") or "")
    assert [c.get("data-layer") for c in chart.iter(f"{SVG}circle")] == ["only"]  # inf is written, not plotted
    assert len(_chart(page, "gh-spectrum-chart").findall(f"{SVG}circle")) == 1
    assert "gh-density-chart" not in page  # grid and density disagree in length


def test_analysis_distributions_as_a_table_and_bands_across_layers() -> None:
    report = estimates_report()
    md = report.to_markdown()
    assert md.endswith("|\n") and "## Distributions" in md
    assert "| `fc` | 1 | -0.2 | 0 | 0.2 | 25.0% | 0 | -0.1 – 0.1 |" in md  # the 5th layer: scale 0.05
    page = report.to_html()
    charts = re.findall(r'<svg[^>]*class="gh-chart gh-dist-chart".*?</svg>', page, re.S)
    assert len(charts) == 2  # gradient and weight
    for chart in charts:
        svg = ET.fromstring(chart)
        assert len(svg.findall(f"{SVG}polygon")) == 4 and len(svg.findall(f"{SVG}polyline")) == 1
        labels = [t.text for t in svg.findall(f"{SVG}text")]
        assert labels[-2:] == ["embed", "fc"]  # the x axis runs over layers, input side first
        # the median line passes through one point per layer
        (median,) = svg.findall(f"{SVG}polyline")
        assert len(median.get("points", "").split()) == len(GSNR)
    assert "<h2>Distributions</h2>" not in estimates_report().model_copy(update={"distributions": {}}).to_html()
