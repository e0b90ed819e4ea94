"""A training run's HTML report: loss, lr, global and per-layer gradient norms over steps as inline SVG,
with a marker at each finding's first bad step; findings and layer table as for checkpoint reports."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from .chart_scale import nice_step, value_range, wants_log
from .distribution_charts import distribution_html
from .html_parts import (
    COLORS,
    CSS,
    FLAGGED_COLOR,
    OK_COLOR,
    finding_html,
    flagged_layers,
    layer_label,
    severity_chips,
    svg_open,
)
from .render import finite, latest, nonfinite_points, run_facts, step_range
from .render import format_number as _num
from .render_estimates import estimates_html
from .schema import Finding, LayerTimeline, Report, Timeline, severity_at_least

# Run reports: time series over training steps, one x scale (steps) shared by every mark of a chart.

RUN_WIDTH, RUN_HEIGHT, LAYER_WIDTH, LAYER_HEIGHT, MAX_RUN_LAYERS = 960, 190, 470, 130, 24
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 56, 12, 16, 22  # margins around the plot area
LOSS_COLOR, LR_COLOR, NONFINITE_COLOR = "#1f2328", "#57606a", "#cf222e"
_RUN_CSS = """
.gh-report figure{display:inline-block;margin:0 8px 10px 0;vertical-align:top}
.gh-report figcaption{font-size:12px;font-family:monospace}.gh-report figure.flagged figcaption{color:#cf222e}
.gh-report p.steps{color:#57606a;margin:.2rem 0}
"""


@dataclass(frozen=True)
class Frame:
    """Maps (step, value) to pixels, so lines, markers and ticks of one chart share one scale."""

    width: int
    height: int
    first: int
    last: int
    low: float  # log10 of the bottom when log, else the bottom value
    high: float
    log: bool

    @property
    def bottom(self) -> float:
        return self.height - PLOT_BOTTOM

    def x(self, step: float) -> float:
        """Steps outside the charted span are pinned to its edges (a finding after the last bucket)."""
        span = max(self.last - self.first, 1)
        clamped = min(max(step, self.first), self.last)
        return PLOT_LEFT + (self.width - PLOT_LEFT - PLOT_RIGHT) * (clamped - self.first) / span

    def y(self, value: float) -> float:
        """Values at or below zero sit on the bottom edge of a log chart (a dead layer stays visible)."""
        level = (math.log10(value) if value > 0 else self.low) if self.log else value
        fraction = (level - self.low) / (self.high - self.low)
        return self.bottom - (self.bottom - PLOT_TOP) * min(max(fraction, 0.0), 1.0)


@dataclass(frozen=True)
class Series:
    """One line of a chart: values aligned with the timeline's steps, and which points are non-finite."""

    name: str
    values: list[float | None]
    color: str
    bad: list[bool]


def _aligned(values: list[float | None], n: int) -> list[float | None]:
    """A series cut or padded with None to the number of steps: an unlogged metric is an empty list."""
    return (values + [None] * n)[:n]


def _series(
    name: str, values: list[float | None], n: int, color: str, counts: list[float | None] | None = None
) -> Series:
    """A point is bad when it is inf/NaN, or its layer counted non-finite gradients (JSON turns inf into null)."""
    vals, nonfinite = _aligned(values, n), _aligned(counts or [], n)
    bad = [(v is not None and not math.isfinite(v)) or (c or 0) > 0 for v, c in zip(vals, nonfinite, strict=True)]
    return Series(name, vals, color, bad)


def _drawable(series: list[Series]) -> list[float]:
    return [
        v for s in series for v, bad in zip(s.values, s.bad, strict=True) if v is not None and finite(v) and not bad
    ]


def _y_ticks(frame: Frame) -> list[tuple[float, str]]:
    if frame.log:
        room = max(2, int((frame.bottom - PLOT_TOP) / 24))  # labels at least 24 px apart
        every = max(1, math.ceil((frame.high - frame.low) / room))
        return [(10.0**d, f"1e{d}") for d in range(int(frame.low), int(frame.high) + 1, every)]
    tick = nice_step((frame.high - frame.low) / 4)
    count = math.floor((frame.high - frame.low) / tick + 1e-9)
    return [(frame.low + k * tick, _num(round(frame.low + k * tick, 12))) for k in range(count + 1)]


def _x_ticks(frame: Frame) -> list[int]:
    if frame.last <= frame.first:
        return [frame.first]
    tick = max(1, int(nice_step((frame.last - frame.first) / 5)))
    start = math.ceil(frame.first / tick) * tick
    return list(range(start, frame.last + 1, tick))


def _axes(frame: Frame) -> list[str]:
    right = frame.width - PLOT_RIGHT
    parts = [
        f'<rect x="{PLOT_LEFT}" y="{PLOT_TOP}" width="{right - PLOT_LEFT}" height="{frame.bottom - PLOT_TOP:.1f}" '
        'fill="none" stroke="#d0d7de"/>'
    ]
    for value, text in _y_ticks(frame):
        y = frame.y(value)
        parts.append(f'<line x1="{PLOT_LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{PLOT_LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">{escape(text)}</text>')
    for step in _x_ticks(frame):
        parts.append(f'<text x="{frame.x(step):.1f}" y="{frame.height - 6}" text-anchor="middle">{step}</text>')
    return parts


def _runs(frame: Frame, steps: list[int], s: Series) -> list[list[tuple[float, float]]]:
    """Contiguous stretches of drawable points: a gap (None) or a non-finite point breaks the line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for step, value, bad in zip(steps, s.values, s.bad, strict=True):
        if value is None or bad or not math.isfinite(value):
            runs.append([])
        else:
            runs[-1].append((frame.x(step), frame.y(value)))
    return [run for run in runs if run]


def _line(frame: Frame, steps: list[int], s: Series) -> list[str]:
    """One <path> per series, a new subpath after each gap; lone points get a dot since a 1-point subpath is invisible."""
    runs = _runs(frame, steps, s)
    if not runs:
        return []
    d = " ".join("M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in run) for run in runs)
    parts = [
        f'<path class="gh-series" data-series="{escape(s.name)}" d="{d}" fill="none" stroke="{s.color}" '
        f'stroke-width="1.5" stroke-linejoin="round"><title>{escape(s.name)}</title></path>'
    ]
    parts += [
        f'<circle cx="{run[0][0]:.1f}" cy="{run[0][1]:.1f}" r="2" fill="{s.color}"/>' for run in runs if len(run) == 1
    ]
    return parts


def _nonfinite_ticks(frame: Frame, steps: list[int], s: Series) -> list[str]:
    """A red tick on the top edge at every step whose value was inf/NaN or whose gradients held one."""
    return [
        f'<line class="gh-nonfinite" x1="{frame.x(step):.1f}" y1="{PLOT_TOP - 6}" x2="{frame.x(step):.1f}" '
        f'y2="{PLOT_TOP + 5}" stroke="{NONFINITE_COLOR}" stroke-width="2"><title>{escape(s.name)}: non-finite at '
        f"step {step}</title></line>"
        for step, bad in zip(steps, s.bad, strict=True)
        if bad
    ]


def _marked(findings: list[Finding]) -> list[Finding]:
    """Findings with a first bad step, warnings first so errors are painted on top of them."""
    marked = [f for f in findings if f.step is not None and severity_at_least(f.severity, "warning")]
    return sorted(marked, key=lambda f: severity_at_least(f.severity, "error"))


def _marker(frame: Frame, f: Finding, label_row: int | None) -> list[str]:
    """A vertical line at the finding's first bad step (solid for error/critical, dashed and light for warnings)."""
    assert f.step is not None
    color, x, strong = COLORS.get(f.severity, "#57606a"), frame.x(f.step), severity_at_least(f.severity, "error")
    style = 'stroke-width="1.5"' if strong else 'stroke-width="1" stroke-dasharray="4 3" stroke-opacity="0.7"'
    parts = []
    if f.last_step is not None and f.last_step > f.step:
        width = frame.x(f.last_step) - x
        parts.append(
            f'<rect x="{x:.1f}" y="{PLOT_TOP}" width="{width:.1f}" height="{frame.bottom - PLOT_TOP:.1f}" '
            f'fill="{color}" fill-opacity="{0.08 if strong else 0.04}"/>'
        )
    parts.append(
        f'<line class="gh-marker gh-marker-{f.severity}" data-rule="{escape(f.rule)}" data-step="{f.step}" '
        f'x1="{x:.1f}" y1="{PLOT_TOP}" x2="{x:.1f}" y2="{frame.bottom:.1f}" stroke="{color}" {style}>'
        f"<title>{escape(f.rule)} ({f.severity}), {escape(step_range(f) or '')}: {escape(f.title)}</title></line>"
    )
    if label_row is not None:
        right = x > frame.width - 160
        parts.append(
            f'<text x="{x - 3 if right else x + 3:.1f}" y="{PLOT_TOP + 10 + 11 * label_row}" fill="{color}" '
            f'text-anchor="{"end" if right else "start"}">{escape(f.rule)} @ {f.step}</text>'
        )
    return parts


@dataclass(frozen=True)
class ChartSpec:
    """What a time-series chart shows and how it is labelled."""

    css_class: str
    label: str
    width: int = RUN_WIDTH
    height: int = RUN_HEIGHT
    log: bool | None = None  # None: choose from the data (wants_log)
    value_range: tuple[float, float] | None = None  # shared across charts (the per-layer small multiples)
    label_markers: bool = True


def time_chart(steps: list[int], series: list[Series], findings: list[Finding], spec: ChartSpec) -> str:
    """Lines over steps with gaps for unlogged points, red ticks at non-finite ones and finding markers."""
    values = _drawable(series)
    log = wants_log(values) if spec.log is None else spec.log
    low, high = spec.value_range or value_range(values, log)
    frame = Frame(spec.width, spec.height, steps[0], steps[-1], low, high, log)
    scale = "log scale" if log else "linear scale"
    parts = [svg_open(spec.width, spec.height, f"gh-time-chart {spec.css_class}", f"{spec.label} per step, {scale}")]
    parts += _axes(frame)
    if not values:
        middle = (PLOT_TOP + frame.bottom) / 2
        parts.append(f'<text x="{frame.x(steps[0]) + 8:.1f}" y="{middle:.1f}" fill="#57606a">no finite values</text>')
    for row, f in enumerate(_marked(findings)):
        parts += _marker(frame, f, row % 4 if spec.label_markers else None)
    for s in series:
        parts += _line(frame, steps, s) + _nonfinite_ticks(frame, steps, s)
    parts.append("</svg>")
    return "".join(parts)


def _overview_charts(report: Report, timeline: Timeline) -> list[str]:
    """Loss, global gradient norm (log) and, when logged, the learning rate."""
    steps, n = timeline.steps, len(timeline.steps)
    loss = _series("loss", timeline.loss, n, LOSS_COLOR)
    gnorm = _series("global gradient norm", timeline.global_grad_norm, n, OK_COLOR)
    parts = [
        "<h3>Loss</h3>",
        time_chart(steps, [loss], report.findings, ChartSpec("gh-loss-chart", "loss")),
        "<h3>Global gradient norm</h3>",
        time_chart(
            steps, [gnorm], report.findings, ChartSpec("gh-global-norm-chart", "global gradient norm", log=True)
        ),
    ]
    lr = _series("learning rate", timeline.lr, n, LR_COLOR)
    if any(finite(v) for v in lr.values):
        spec = ChartSpec("gh-lr-chart", "learning rate", height=120, label_markers=False)
        parts += ["<h3>Learning rate</h3>", time_chart(steps, [lr], report.findings, spec)]
    return parts


def _layer_series(name: str, layer: LayerTimeline, n: int, flagged: set[str]) -> Series:
    color = FLAGGED_COLOR if name in flagged else OK_COLOR
    return _series(f"{name} gradient norm", layer.grad_norm, n, color, layer.nonfinite)


def layer_charts(report: Report, timeline: Timeline) -> str:
    """Small multiples of each charted layer's gradient norm on one shared log scale, so layers compare at a glance."""
    flagged, n = flagged_layers(report), len(timeline.steps)
    layers = list(timeline.layers.items())[:MAX_RUN_LAYERS]
    series = {name: _layer_series(name, layer, n, flagged) for name, layer in layers}
    shared = value_range(_drawable(list(series.values())), log=True)
    figures = []
    for name, s in series.items():
        spec = ChartSpec(
            "gh-layer-chart", f"{name} gradient norm", LAYER_WIDTH, LAYER_HEIGHT, True, shared, label_markers=False
        )
        css = " class='flagged'" if name in flagged else ""
        figures.append(
            f"<figure{css}><figcaption>{layer_label(name)}</figcaption>"
            f"{time_chart(timeline.steps, [s], report.findings, spec)}</figure>"
        )
    return "<div class='gh-layers'>" + "".join(figures) + "</div>"


def _run_layer_table(timeline: Timeline) -> str:
    head = "<table><tr><th>layer</th><th>latest grad norm</th><th>min</th><th>max</th><th>non-finite points</th></tr>"
    rows = []
    for name, layer in timeline.layers.items():
        values = [v for v in layer.grad_norm if v is not None and math.isfinite(v)]
        bad = nonfinite_points(layer.grad_norm, layer.nonfinite)
        css = " class='flagged'" if bad else ""
        rows.append(
            f"<tr{css}><td><code>{escape(name)}</code></td>"
            f"<td class='num'>{_num(latest(layer.grad_norm))}</td>"
            f"<td class='num'>{_num(min(values) if values else None)}</td>"
            f"<td class='num'>{_num(max(values) if values else None)}</td><td class='num'>{bad or ''}</td></tr>"
        )
    return head + "".join(rows) + "</table>"


def _run_charts(report: Report) -> list[str]:
    timeline = report.timeline
    if timeline is None or not timeline.steps:
        return ["<h2>Training curves</h2>", "<p>No steps logged yet.</p>"]
    return [
        "<h2>Training curves</h2>",
        "<p><small>Vertical lines mark the first bad step of each finding (solid: error or critical; dashed: "
        "warning), shaded up to its last step. Red ticks on the top edge are non-finite values; breaks in a "
        "line are steps that were not logged.</small></p>",
        *_overview_charts(report, timeline),
        "<h2>Gradient norm per layer</h2>",
        "<p><small>One shared log scale for every layer: a layer far below the others barely learns, one far "
        "above dominates the update. Red: named by a finding.</small></p>",
        layer_charts(report, timeline) if timeline.layers else "<p>No layers were charted.</p>",
        *distribution_html(report),
    ]


def run_html_fragment(report: Report) -> str:
    """A training run as one <div class="gh-report">: loss, global and per-layer gradient norms over steps, findings."""
    color = COLORS.get(report.health, "#57606a")
    chips, timeline = severity_chips(report), report.timeline
    body = [
        f"<div class='gh-report'><style>{CSS}{_RUN_CSS}</style>",
        f"<h1>gradhealth run report <span class='badge' style='background:{color}'>{escape(report.health)}</span></h1>",
        f"<p>{escape(report.summary)}</p>",
        f"<p class='facts'>{escape(run_facts(report))} Report <code>{escape(report.id)}</code>, "
        f"{escape(report.created_at.strftime('%Y-%m-%d %H:%M UTC'))}.</p>",
        f"<p class='chips'>{chips}</p>" if chips else "",
        *_run_charts(report),
        "<h2>Findings</h2>" if report.findings else "<h2>No findings</h2>",
        *finding_html(report),
        estimates_html(report),
        "<h2>Layers</h2>" if timeline is not None and timeline.layers else "",
        _run_layer_table(timeline) if timeline is not None and timeline.layers else "",
        "</div>",
    ]
    return "\n".join(part for part in body if part)
