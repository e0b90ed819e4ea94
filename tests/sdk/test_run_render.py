"""Run reports (kind "run") in the SDK's renderers: time-series SVG charts, step ranges, JUnit; checkpoints unchanged."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from gradhealth.report import Finding, LayerTimeline, ModelInfo, Timeline, html_parts, render_run_html
from gradhealth.report.render_run_html import (
    LAYER_WIDTH,
    PLOT_BOTTOM,
    PLOT_LEFT,
    PLOT_RIGHT,
    PLOT_TOP,
    RUN_HEIGHT,
    RUN_WIDTH,
)

import gradhealth

FIXTURES = Path(__file__).parent / "fixtures"
SVG = "{http://www.w3.org/2000/svg}"
STEPS = list(range(0, 400, 4))  # 100 points, steps 0..396
NAN_STEP = 320  # from here on the fc layer's gradients (and the loss) are non-finite
LAYER_SCALES = {"conv1": 1e-4, "blocks.0.conv": 1e-2, "blocks.1.conv": 0.3, "fc": 5.0}


def _layer(name: str, scale: float) -> LayerTimeline:
    """A slowly growing gradient norm, with unlogged gaps in one layer and non-finite steps in fc."""
    grad: list[float | None] = [scale * (1 + i / 50) for i in range(len(STEPS))]
    nonfinite: list[float | None] = [0.0] * len(STEPS)
    if name == "blocks.0.conv":
        grad[20:25] = [None] * 5  # gaps: never bridged by the line
        grad[60] = None
    if name == "fc":
        for i, step in enumerate(STEPS):
            if step >= NAN_STEP:
                grad[i], nonfinite[i] = math.inf, 2.0
        grad[85] = None  # what JSON makes of inf: the nonfinite count still marks it
    return LayerTimeline(grad_norm=grad, nonfinite=nonfinite, grad_max_abs=[None] * len(STEPS))


def _timeline(loss_decades: float = 0.6) -> Timeline:
    n = len(STEPS)
    loss: list[float | None] = [2.3 * 10 ** (-loss_decades * i / (n - 1)) for i in range(n)]
    loss[10:13] = [None] * 3
    loss[80] = math.nan  # step 320: the loss went NaN
    loss[81:] = [None] * (n - 81)
    gnorm: list[float | None] = [1.0 + i / 10 for i in range(n)]
    gnorm[80:] = [math.inf] * (n - 80)
    lr: list[float | None] = [0.1 * min(1.0, (i + 1) / 10) for i in range(n)]
    return Timeline(
        steps=STEPS,
        loss=loss,
        lr=lr,
        global_grad_norm=gnorm,
        layers={name: _layer(name, scale) for name, scale in LAYER_SCALES.items()},
    )


def _finding(rule: str, severity: str, step: int | None, last: int | None, layers: list[str]) -> Finding:
    return Finding(
        rule=rule,
        severity=severity,  # type: ignore[arg-type]
        title=f"{rule} title",
        message=f"{rule} <message> & details",
        layers=layers,
        step=step,
        last_step=last,
        confidence=0.9,
    )


FINDINGS = [
    _finding("lr_warmup_spike", "warning", 40, 40, []),
    _finding("exploding_gradient", "error", 200, 300, ["fc"]),
    _finding("nonfinite_gradient", "critical", NAN_STEP, 396, ["fc"]),
    _finding("loss_plateau", "info", 8, 396, []),
]


def run_report(timeline: Timeline | None = None, findings: list[Finding] | None = None) -> gradhealth.Report:
    return gradhealth.Report(
        id="run_123",
        kind="run",
        created_at=datetime(2025, 1, 2, 3, 4, tzinfo=UTC),
        health="critical",
        summary="The run went non-finite at step 320.",
        model=ModelInfo(format="watch", num_parameters=12345, num_layers=4, dtype="float32", device="cpu"),
        findings=FINDINGS if findings is None else findings,
        timeline=_timeline() if timeline is None else timeline,
    )


def _svgs(page: str, css_class: str) -> list[ET.Element]:
    """Each chart of a class, parsed as XML: the inline SVG must be well-formed on its own."""
    found = re.findall(rf'<svg[^>]*class="gh-chart gh-time-chart {css_class}".*?</svg>', page, re.S)
    return [ET.fromstring(svg) for svg in found]


def _points(path: ET.Element) -> list[list[tuple[float, float]]]:
    """The subpaths of a series' path data, as lists of (x, y)."""
    runs = []
    for sub in path.get("d", "").split("M")[1:]:
        runs.append([(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+),(-?[\d.]+)", sub)])
    return runs


def _x(step: float, width: int = RUN_WIDTH) -> float:
    """The run charts' x scale, written out here rather than taken from the renderer."""
    return PLOT_LEFT + (width - PLOT_LEFT - PLOT_RIGHT) * (step - STEPS[0]) / (STEPS[-1] - STEPS[0])


def _drawable(layer: LayerTimeline) -> list[tuple[int, float]]:
    return [
        (step, v)
        for step, v, bad in zip(STEPS, layer.grad_norm, layer.nonfinite, strict=True)
        if v is not None and math.isfinite(v) and not bad
    ]


def _max_residual(xs: list[float], ys: list[float]) -> float:
    """How far the points stray from their least-squares line."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return max(abs(y - my - slope * (x - mx)) for x, y in zip(xs, ys, strict=True))


class _Checker(HTMLParser):
    """Tracks open elements: every non-void tag must close in order."""

    VOID = {"meta", "br", "img", "input", "hr", "link", "col", "wbr", "source"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-3:]}"
        self.stack.pop()


@pytest.fixture(scope="module")
def page() -> str:
    return run_report().to_html()


def test_page_parses_and_is_inert(page: str) -> None:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [] and "script" not in checker.tags and "<script" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<title>gradhealth run report run_123: critical</title>" in page
    assert "&lt;message&gt; &amp; details" in page  # finding text is escaped
    assert "gh-gradient-chart" not in page and "gh-activation-chart" not in page


def test_one_line_per_charted_layer_with_every_logged_point(page: str) -> None:
    charts = _svgs(page, "gh-layer-chart")
    assert len(charts) == len(LAYER_SCALES)
    timeline = _timeline()
    for chart in charts:
        assert chart.get("role") == "img" and "log scale" in (chart.get("aria-label") or "")
        (path,) = chart.iter(f"{SVG}path")
        name = (path.get("data-series") or "").removesuffix(" gradient norm")
        want = _drawable(timeline.layers[name])
        runs = _points(path)
        assert sum(len(run) for run in runs) == len(want), name
        assert [x for run in runs for x, _ in run] == pytest.approx(
            [_x(step, LAYER_WIDTH) for step, _ in want], abs=0.051
        )
    gapped = next(c for c in charts if "blocks.0.conv" in (c.get("aria-label") or ""))
    assert len(_points(next(gapped.iter(f"{SVG}path")))) == 3  # two gaps, three stretches


def test_layers_share_one_log_scale(page: str) -> None:
    """Whole decades around every layer's values, the same mapping in each small chart."""
    timeline = _timeline()
    logs = [math.log10(v) for layer in timeline.layers.values() for _, v in _drawable(layer)]
    low, high = math.floor(min(logs)), math.ceil(max(logs))
    bottom = render_run_html.LAYER_HEIGHT - PLOT_BOTTOM
    for chart in _svgs(page, "gh-layer-chart"):
        (path,) = chart.iter(f"{SVG}path")
        name = (path.get("data-series") or "").removesuffix(" gradient norm")
        ys = [y for run in _points(path) for _, y in run]
        want = [
            bottom - (bottom - PLOT_TOP) * (math.log10(v) - low) / (high - low)
            for _, v in _drawable(timeline.layers[name])
        ]
        assert ys == pytest.approx(want, abs=0.051), name
        ticks = {t.text for t in chart.iter(f"{SVG}text")}
        assert {f"1e{low}", f"1e{high}"} <= ticks


def test_markers_sit_at_the_findings_first_step(page: str) -> None:
    (loss,) = _svgs(page, "gh-loss-chart")
    markers = [line for line in loss.iter(f"{SVG}line") if "gh-marker" in (line.get("class") or "")]
    by_rule = {m.get("data-rule"): m for m in markers}
    assert set(by_rule) == {"lr_warmup_spike", "exploding_gradient", "nonfinite_gradient"}  # info: no marker
    for f in FINDINGS[:3]:
        marker = by_rule[f.rule]
        assert f.step is not None and marker.get("data-step") == str(f.step)
        assert float(marker.get("x1", "nan")) == pytest.approx(_x(f.step), abs=0.051)
        assert float(marker.get("x2", "nan")) == float(marker.get("x1", "nan"))
        assert float(marker.get("y1", "nan")) == PLOT_TOP and float(marker.get("y2", "nan")) == RUN_HEIGHT - PLOT_BOTTOM
        title = marker.find(f"{SVG}title")
        assert title is not None and f.rule in (title.text or "") and str(f.step) in (title.text or "")
    assert by_rule["lr_warmup_spike"].get("stroke-dasharray")  # warnings are lighter
    assert not by_rule["nonfinite_gradient"].get("stroke-dasharray")
    labels = [t.text for t in loss.iter(f"{SVG}text")]
    assert "nonfinite_gradient @ 320" in labels and "exploding_gradient @ 200" in labels
    # Every chart, layer ones included, carries the same markers at the same x.
    for chart in _svgs(page, "gh-layer-chart"):
        xs = sorted(float(m.get("x1", "nan")) for m in chart.iter(f"{SVG}line") if m.get("data-rule"))
        want = sorted(_x(f.step, LAYER_WIDTH) for f in FINDINGS[:3] if f.step is not None)
        assert xs == pytest.approx(want, abs=0.051)


def test_nonfinite_points_get_a_red_tick_and_break_the_line(page: str) -> None:
    (fc,) = [c for c in _svgs(page, "gh-layer-chart") if (c.get("aria-label") or "").startswith("fc ")]
    ticks = [line for line in fc.iter(f"{SVG}line") if line.get("class") == "gh-nonfinite"]
    bad_steps = [s for s in STEPS if s >= NAN_STEP]
    assert [float(t.get("x1", "nan")) for t in ticks] == pytest.approx(
        [_x(s, LAYER_WIDTH) for s in bad_steps], abs=0.051
    )
    assert all(t.get("stroke") == render_run_html.NONFINITE_COLOR for t in ticks)
    assert all(float(t.get("y1", "nan")) < PLOT_TOP for t in ticks)  # on the top edge
    (path,) = fc.iter(f"{SVG}path")
    assert max(x for run in _points(path) for x, _ in run) < _x(NAN_STEP, LAYER_WIDTH)
    assert path.get("stroke") == html_parts.FLAGGED_COLOR  # a finding names fc
    (gnorm,) = _svgs(page, "gh-global-norm-chart")
    assert len([line for line in gnorm.iter(f"{SVG}line") if line.get("class") == "gh-nonfinite"]) == len(bad_steps)
    (loss,) = _svgs(page, "gh-loss-chart")
    assert [float(t.get("x1", "nan")) for t in loss.iter(f"{SVG}line") if t.get("class") == "gh-nonfinite"] == [
        pytest.approx(_x(NAN_STEP), abs=0.051)
    ]


def test_json_round_trip_keeps_the_nonfinite_marks() -> None:
    """The service stores JSON, where inf becomes null: the layer's nonfinite count still marks the step."""
    report = run_report()
    again = gradhealth.Report.model_validate_json(report.model_dump_json())
    (fc,) = [c for c in _svgs(again.to_html(), "gh-layer-chart") if (c.get("aria-label") or "").startswith("fc ")]
    ticks = [line for line in fc.iter(f"{SVG}line") if line.get("class") == "gh-nonfinite"]
    assert len(ticks) == len([s for s in STEPS if s >= NAN_STEP])


def test_loss_scale_follows_its_span() -> None:
    """Linear while the loss spans under two decades, log beyond; the line is straight in the chosen scale."""
    for decades, scale, transform in ((0.6, "linear scale", float), (3.0, "log scale", math.log10)):
        (chart,) = _svgs(run_report(_timeline(decades)).to_html(), "gh-loss-chart")
        assert scale in (chart.get("aria-label") or "")
        (path,) = chart.iter(f"{SVG}path")
        ys = [y for run in _points(path) for _, y in run]
        values = [transform(v) for v in _timeline(decades).loss if v is not None and math.isfinite(v)]
        assert _max_residual(values, ys) < 0.1, scale  # straight up to the SVG's 0.1 px rounding
        assert (
            _max_residual([math.log10(v) for v in values] if scale == "linear scale" else [10**v for v in values], ys)
            > 1
        )


def test_lr_chart_only_when_logged(page: str) -> None:
    assert len(_svgs(page, "gh-lr-chart")) == 1
    timeline = _timeline()
    timeline.lr = []
    assert _svgs(run_report(timeline).to_html(), "gh-lr-chart") == []


def test_findings_show_their_step_range(page: str) -> None:
    assert "<p class='steps'>Steps 200–300</p>" in page and "<p class='steps'>Step 40</p>" in page
    markdown = run_report().to_markdown()
    assert markdown.startswith("# gradhealth run report 🛑 critical")
    assert "Steps 320–396." in markdown and "Steps 200–300." in markdown and "Step 40." in markdown
    assert "Steps 0–396 (100 points)" in markdown and "<svg" not in markdown


def test_markdown_layer_table() -> None:
    rows = {
        line.split("|")[1].strip(" `"): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in run_report().to_markdown().splitlines()
        if line.startswith("| `")
    }
    assert set(rows) == set(LAYER_SCALES)
    assert rows["conv1"] == ["2.98e-04", "1.00e-04", "2.98e-04", ""]  # latest, min, max, non-finite points
    bad = len([s for s in STEPS if s >= NAN_STEP])
    assert rows["fc"][3] == str(bad) and rows["fc"][1] == "5"


def test_junit_has_a_testcase_per_rule_and_the_step_range() -> None:
    root = ET.fromstring(run_report().to_junit("warning"))
    cases = {case.get("name"): case for case in root.iter("testcase")}
    assert {f.rule for f in FINDINGS} <= set(cases)
    assert "unused_parameters" not in cases  # checkpoint-only rules are not a run's checks
    failure = cases["nonfinite_gradient"].find("failure")
    assert failure is not None and "steps 320–396" in (failure.get("message") or "")
    assert "Steps: 320–396" in (failure.text or "")
    assert cases["loss_plateau"].find("failure") is None and cases["loss_plateau"].find("system-out") is not None
    assert root.get("failures") == "3"


def test_edge_cases_render() -> None:
    empty = run_report(Timeline(), findings=[])
    assert "No steps logged yet" in empty.to_html() and "No steps logged yet" in empty.to_markdown()
    nothing = gradhealth.Report.model_validate({**run_report(findings=[]).model_dump(), "timeline": None})
    assert "No steps logged yet" in nothing.to_html()
    one = Timeline(steps=[7], loss=[1.0], layers={"a": LayerTimeline(grad_norm=[None], nonfinite=[None])})
    page = run_report(one, FINDINGS).to_html()
    (chart,) = _svgs(page, "gh-layer-chart")
    assert "no finite values" in ET.tostring(chart, encoding="unicode")
    (loss,) = _svgs(page, "gh-loss-chart")
    assert len(list(loss.iter(f"{SVG}circle"))) == 1  # a lone point is a dot


def test_checkpoint_reports_render_as_before() -> None:
    """A saved checkpoint report renders byte for byte as it did before run reports existed."""
    report = gradhealth.Report.load(FIXTURES / "checkpoint_report.json")
    assert report.kind == "checkpoint"
    assert report.to_html() == (FIXTURES / "checkpoint_report.html").read_text()
    assert report.to_markdown() == (FIXTURES / "checkpoint_report.md").read_text()
