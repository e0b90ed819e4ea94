"""A self-contained HTML report for people: verdict, findings with advice, gradient-flow and
activation-health charts as inline SVG, and the layer table. No scripts, no external assets,
CSS scoped under `.gh-report` so the same fragment can sit inside a Jupyter notebook."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from gradhealth.diagnostics.schema import Finding, LayerStats, LayerTimeline, Report, Timeline, severity_at_least

from .render import finite, latest, nonfinite_points, run_facts, step_range
from .render import format_number as _num

_COLORS = {"healthy": "#1a7f37", "info": "#0969da", "warning": "#9a6700", "error": "#cf222e", "critical": "#8b0000"}
DEAD_COLOR, SATURATED_COLOR, OK_COLOR, FLAGGED_COLOR, SIGNAL_COLOR = (
    "#8250df",
    "#bc4c00",
    "#0969da",
    "#cf222e",
    "#1f2328",
)
_CSS = """
.gh-report{font:14px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;max-width:1000px}
.gh-report h1{font-size:1.6rem;margin:.2rem 0}.gh-report h2{font-size:1.2rem;margin:1.6rem 0 .4rem;
border-bottom:1px solid #d0d7de}.gh-report h3{font-size:1rem;margin:.3rem 0}
.gh-report .badge{color:#fff;border-radius:4px;padding:1px 8px;font-size:.85rem;font-weight:600}
.gh-report .facts{color:#57606a}.gh-report .chips span{display:inline-block;margin-right:.6rem}
.gh-report .finding{border-left:4px solid;padding:.3rem 1rem;margin:.8rem 0;background:#f6f8fa}
.gh-report pre{background:#fff;border:1px solid #d0d7de;padding:.5rem;overflow:auto;font-size:12px}
.gh-report table{border-collapse:collapse;width:100%;font-size:12px}
.gh-report td,.gh-report th{border-bottom:1px solid #d0d7de;padding:2px 6px;text-align:left}
.gh-report td.num{text-align:right;font-variant-numeric:tabular-nums}.gh-report tr.flagged td:first-child{
border-left:3px solid #cf222e}.gh-report svg text{font-family:sans-serif;font-size:10px}
.gh-report .legend span{display:inline-block;margin-right:1rem;font-size:12px}
.gh-report .swatch{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
.gh-report small{color:#57606a}
"""
BAR_HEIGHT, LABEL_WIDTH, PLOT_WIDTH, MAX_CHART_LAYERS = 14, 260, 560, 200


def _label(name: str) -> str:
    return escape(name if len(name) <= 40 else "…" + name[-39:])


def _flagged(report: Report) -> set[str]:
    return {name for f in report.findings if f.severity != "info" for name in f.layers}


def _svg_open(width: int, height: int, css_class: str, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gh-chart {css_class}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
    )


def _chart_layers(report: Report) -> list[LayerStats]:
    """Layers with parameters or a measured output gradient (activation-only rows have neither)."""
    rows = [
        la for la in report.layers if la.num_parameters or la.grad_rms is not None or la.output_grad_rms is not None
    ]
    return rows[:MAX_CHART_LAYERS]


def _positive_logs(values: list[float | None]) -> list[float]:
    return [math.log10(v) for v in values if v is not None and v > 0 and math.isfinite(v)]


def gradient_chart(report: Report) -> str:
    """Log-scale bars of each layer's parameter-gradient RMS (red when a finding names the layer),
    with a dot for the gradient arriving at the layer's output (the back-propagated signal)."""
    flagged = _flagged(report)
    rows = _chart_layers(report)
    logs = _positive_logs([la.grad_rms for la in rows] + [la.output_grad_rms for la in rows])
    if not logs:
        return "<p>No finite, nonzero gradients to chart.</p>"
    low, high = math.floor(min(logs)), math.ceil(max(logs))
    high = max(high, low + 1)
    height = BAR_HEIGHT * len(rows) + 30

    def x_of(value: float) -> float:
        return LABEL_WIDTH + PLOT_WIDTH * (math.log10(value) - low) / (high - low)

    parts = [_svg_open(LABEL_WIDTH + PLOT_WIDTH + 20, height, "gh-gradient-chart", "gradient RMS per layer, log scale")]
    for decade in range(low, high + 1):
        x = LABEL_WIDTH + PLOT_WIDTH * (decade - low) / (high - low)
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 20}" stroke="#d0d7de"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle">1e{decade}</text>')
    for i, layer in enumerate(rows):
        y, value, signal = i * BAR_HEIGHT, layer.grad_rms, layer.output_grad_rms
        parts.append(f'<text x="{LABEL_WIDTH - 6}" y="{y + 10}" text-anchor="end">{_label(layer.name)}</text>')
        if value is not None and value > 0 and math.isfinite(value):
            color = FLAGGED_COLOR if layer.name in flagged else OK_COLOR
            parts.append(
                f'<rect x="{LABEL_WIDTH}" y="{y + 2}" width="{max(1.0, x_of(value) - LABEL_WIDTH):.1f}" '
                f'height="{BAR_HEIGHT - 4}" fill="{color}"><title>{escape(layer.name)}: parameter grad RMS '
                f"{_num(value)}</title></rect>"
            )
        elif layer.num_parameters:
            parts.append(
                f'<text x="{LABEL_WIDTH + 4}" y="{y + 10}" fill="{FLAGGED_COLOR}">{escape(_num(value))}</text>'
            )
        if signal is not None and signal > 0 and math.isfinite(signal):
            parts.append(
                f'<circle cx="{x_of(signal):.1f}" cy="{y + BAR_HEIGHT / 2:.1f}" r="3.5" fill="{SIGNAL_COLOR}" '
                f'stroke="#fff"><title>{escape(layer.name)}: output grad RMS {_num(signal)}</title></circle>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _activation_rows(report: Report) -> list[LayerStats]:
    return [layer for layer in report.layers if layer.activation is not None][:MAX_CHART_LAYERS]


def activation_chart(report: Report) -> str:
    """One row per activation op: its dead and/or saturated fraction (whichever the kind can have), 0-100%."""
    rows = _activation_rows(report)
    if not rows:
        return "<p>No activation ops were found in the graph.</p>"
    flagged = _flagged(report)
    row_height = BAR_HEIGHT + 4
    height = row_height * len(rows) + 30
    parts = [
        _svg_open(
            LABEL_WIDTH + PLOT_WIDTH + 20, height, "gh-activation-chart", "dead and saturated fraction per activation"
        )
    ]
    for tick in range(0, 101, 25):
        x = LABEL_WIDTH + PLOT_WIDTH * tick / 100
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 20}" stroke="#d0d7de"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle">{tick}%</text>')
    for i, layer in enumerate(rows):
        act = layer.activation
        assert act is not None
        y = i * row_height
        mark = f' fill="{FLAGGED_COLOR}" font-weight="bold"' if layer.name in flagged else ""
        parts.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 12}" text-anchor="end"{mark}>'
            f"{_label(layer.name)} ({escape(act.kind)})</text>"
        )
        bars = [
            (what, value, color)
            for what, value, color in (
                ("dead", act.dead_fraction, DEAD_COLOR),
                ("saturated", act.saturated_fraction, SATURATED_COLOR),
            )
            if value is not None
        ]  # a kind without the notion (ReLU cannot saturate) gets no bar
        if not bars:
            parts.append(f'<text x="{LABEL_WIDTH + 4}" y="{y + 12}" fill="#57606a">not measured</text>')
        thickness = (row_height - 6) / max(len(bars), 1)
        for j, (what, value, color) in enumerate(bars):
            top = y + 2 + j * thickness
            width = max(1.0, PLOT_WIDTH * min(max(value, 0.0), 1.0))
            parts.append(
                f'<rect x="{LABEL_WIDTH}" y="{top:.1f}" width="{width:.1f}" height="{thickness - 1:.1f}" '
                f'fill="{color}"><title>{escape(layer.name)} ({escape(act.kind)}): {what} {value:.1%}</title></rect>'
            )
            parts.append(
                f'<text x="{LABEL_WIDTH + width + 4:.1f}" y="{top + thickness - 2:.1f}">{what} {value:.0%}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _evidence(f: Finding) -> str:
    items = [(k, v) for k, v in f.evidence.items() if not isinstance(v, list)][:8]
    if not items:
        return ""
    cells = "".join(
        f"<tr><td>{escape(k)}</td><td class='num'>{escape(_num(v) if isinstance(v, float | int) and not isinstance(v, bool) else str(v))}</td></tr>"
        for k, v in items
    )
    return f"<details><summary>Evidence</summary><table>{cells}</table></details>"


def _reference(text: str) -> str:
    if text.startswith(("https://", "http://")):
        return f'<a href="{escape(text)}">{escape(text)}</a>'
    return escape(text)


def _finding_html(report: Report) -> list[str]:
    out = []
    order = {"critical": 0, "error": 1, "warning": 2, "info": 3}
    for f in sorted(report.findings, key=lambda f: order.get(f.severity, 4)):
        color = _COLORS.get(f.severity, "#57606a")
        out.append(f'<div class="finding" style="border-color:{color}">')
        out.append(
            f"<h3><span class='badge' style='background:{color}'>{escape(f.severity)}</span> "
            f"{escape(f.title)} <code>{escape(f.rule)}</code></h3>"
        )
        out.append(f"<p>{escape(f.message)}</p>")
        steps = step_range(f)
        if steps:
            out.append(f"<p class='steps'>{escape(steps[0].upper() + steps[1:])}</p>")
        if f.layers:
            more = f" and {len(f.layers) - 12} more" if len(f.layers) > 12 else ""
            out.append("<p>Layers: " + ", ".join(f"<code>{escape(n)}</code>" for n in f.layers[:12]) + more + "</p>")
        for fix in f.remediation:
            out.append(f"<p><b>{escape(fix.action)}</b>: {escape(fix.detail)}</p>")
            if fix.snippet:
                out.append(f"<pre>{escape(fix.snippet)}</pre>")
            if fix.references:
                out.append("<p><small>" + "; ".join(_reference(r) for r in fix.references) + "</small></p>")
        out.append(_evidence(f))
        out.append("</div>")
    return out


def _layer_table(report: Report) -> str:
    flagged = _flagged(report)
    head = (
        "<table><tr><th>layer</th><th>type</th><th>grad RMS</th><th>grad/weight</th><th>output grad RMS</th>"
        "<th>activation</th><th>dead</th><th>saturated</th><th>non-finite</th></tr>"
    )
    rows = []
    for layer in report.layers:
        act = layer.activation
        css = " class='flagged'" if layer.name in flagged else ""
        rows.append(
            f"<tr{css}><td><code>{escape(layer.name)}</code></td><td>{escape(layer.type)}</td>"
            f"<td class='num'>{_num(layer.grad_rms)}</td><td class='num'>{_num(layer.grad_to_weight)}</td>"
            f"<td class='num'>{_num(layer.output_grad_rms)}</td><td>{escape(act.kind) if act else ''}</td>"
            f"<td class='num'>{_num(act.dead_fraction) if act else ''}</td>"
            f"<td class='num'>{_num(act.saturated_fraction) if act else ''}</td>"
            f"<td class='num'>{layer.nonfinite or ''}</td></tr>"
        )
    return head + "".join(rows) + "</table>"


def _legend(*items: tuple[str, str]) -> str:
    return (
        "<p class='legend'>"
        + "".join(
            f"<span><i class='swatch' style='background:{color}'></i>{escape(text)}</span>" for color, text in items
        )
        + "</p>"
    )


def _chips(report: Report) -> str:
    counts = {s: sum(f.severity == s for f in report.findings) for s in ("critical", "error", "warning", "info")}
    plural = {"error": "errors", "warning": "warnings"}
    return "".join(
        f"<span style='color:{_COLORS[s]}'>{n} {plural.get(s, s) if n > 1 else s}</span>"
        for s, n in counts.items()
        if n
    )


def to_html_fragment(report: Report) -> str:
    """The report as one <div class="gh-report"> with its own scoped <style>: for notebooks and pages."""
    if report.kind == "run":
        return run_html_fragment(report)
    color = _COLORS.get(report.health, "#57606a")
    m = report.model
    chips = _chips(report)
    loss, gnorm = report.metrics.get("loss"), report.metrics.get("global_grad_norm")
    body = [
        f"<div class='gh-report'><style>{_CSS}</style>",
        f"<h1>gradhealth report <span class='badge' style='background:{color}'>{escape(report.health)}</span></h1>",
        f"<p>{escape(report.summary)}</p>",
        f"<p class='facts'>Model: {escape(m.format)}, {m.num_parameters:,} parameters in {m.num_layers} layers, "
        f"{escape(m.dtype)} on {escape(m.device)}. Loss {_num(loss if isinstance(loss, float | int) else None)}, "
        f"global gradient norm {_num(gnorm if isinstance(gnorm, float | int) else None)}. "
        f"Report <code>{escape(report.id)}</code>, {escape(report.created_at.strftime('%Y-%m-%d %H:%M UTC'))}.</p>",
        f"<p class='chips'>{chips}</p>" if chips else "",
        "<h2>Gradient flow</h2>",
        "<p><small>Log scale, input side at the top. Bars: RMS of each layer's parameter gradient; dots: RMS of "
        "the gradient arriving at the layer's output. Healthy networks keep both within a few decades; a steady "
        "fall toward the input means vanishing gradients, a rise means exploding ones.</small></p>",
        _legend(
            (OK_COLOR, "parameter gradient"),
            (FLAGGED_COLOR, "layer named by a finding"),
            (SIGNAL_COLOR, "output gradient"),
        ),
        gradient_chart(report),
        "<h2>Activation health</h2>",
        "<p><small>Per activation op: the fraction of units that are dead (inactive for every sample of the "
        "batch) and of outputs that are saturated (derivative below 1% of its maximum). Either one above a few "
        "tens of percent starves the layers before it of gradient.</small></p>",
        _legend((DEAD_COLOR, "dead"), (SATURATED_COLOR, "saturated")),
        activation_chart(report),
        "<h2>Findings</h2>" if report.findings else "<h2>No findings</h2>",
        *_finding_html(report),
        "<h2>Layers</h2>",
        _layer_table(report),
        "</div>",
    ]
    return "\n".join(part for part in body if part)


def to_html(report: Report) -> str:
    """One file, no external assets and no scripts: safe to attach to a CI run or e-mail."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        # Nothing may load from anywhere: a report opened from a CI artifact stays offline and inert.
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>gradhealth {'run ' if report.kind == 'run' else ''}report {escape(report.id)}: "
        f"{escape(report.health)}</title>"
        "<style>body{margin:2rem auto;max-width:1000px;padding:0 1rem;background:#fff}</style></head><body>\n"
        + to_html_fragment(report)
        + "\n</body></html>\n"
    )


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


def value_range(values: list[float], log: bool) -> tuple[float, float]:
    """Whole decades on a log axis; a padded, rounded span on a linear one; a unit span when nothing is drawable."""
    if log:
        logs = [math.log10(v) for v in values if v > 0]
        if not logs:
            return -1.0, 0.0
        low, high = math.floor(min(logs)), math.ceil(max(logs))
        return float(low), float(max(high, low + 1))
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if low == high:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    tick = _nice_step((high - low) / 4)
    return math.floor(low / tick) * tick, math.ceil(high / tick) * tick


def wants_log(values: list[float]) -> bool:
    """Loss and lr go log only when positive and spanning more than two decades; otherwise linear reads better."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 100


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    mantissa = raw / 10**exponent
    return next(m for m in (1, 2, 2.5, 5, 10) if m >= mantissa - 1e-9) * 10**exponent


def _y_ticks(frame: Frame) -> list[tuple[float, str]]:
    if frame.log:
        room = max(2, int((frame.bottom - PLOT_TOP) / 24))  # labels at least 24 px apart
        every = max(1, math.ceil((frame.high - frame.low) / room))
        return [(10.0**d, f"1e{d}") for d in range(int(frame.low), int(frame.high) + 1, every)]
    tick = _nice_step((frame.high - frame.low) / 4)
    count = math.floor((frame.high - frame.low) / tick + 1e-9)
    return [(frame.low + k * tick, _num(round(frame.low + k * tick, 12))) for k in range(count + 1)]


def _x_ticks(frame: Frame) -> list[int]:
    if frame.last <= frame.first:
        return [frame.first]
    tick = max(1, int(_nice_step((frame.last - frame.first) / 5)))
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
    color, x, strong = _COLORS.get(f.severity, "#57606a"), frame.x(f.step), severity_at_least(f.severity, "error")
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
    parts = [_svg_open(spec.width, spec.height, f"gh-time-chart {spec.css_class}", f"{spec.label} per step, {scale}")]
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
    flagged, n = _flagged(report), len(timeline.steps)
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
            f"<figure{css}><figcaption>{_label(name)}</figcaption>"
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
    ]


def run_html_fragment(report: Report) -> str:
    """A training run as one <div class="gh-report">: loss, global and per-layer gradient norms over steps, findings."""
    color = _COLORS.get(report.health, "#57606a")
    chips, timeline = _chips(report), report.timeline
    body = [
        f"<div class='gh-report'><style>{_CSS}{_RUN_CSS}</style>",
        f"<h1>gradhealth run report <span class='badge' style='background:{color}'>{escape(report.health)}</span></h1>",
        f"<p>{escape(report.summary)}</p>",
        f"<p class='facts'>{escape(run_facts(report))} Report <code>{escape(report.id)}</code>, "
        f"{escape(report.created_at.strftime('%Y-%m-%d %H:%M UTC'))}.</p>",
        f"<p class='chips'>{chips}</p>" if chips else "",
        *_run_charts(report),
        "<h2>Findings</h2>" if report.findings else "<h2>No findings</h2>",
        *_finding_html(report),
        "<h2>Layers</h2>" if timeline is not None and timeline.layers else "",
        _run_layer_table(timeline) if timeline is not None and timeline.layers else "",
        "</div>",
    ]
    return "\n".join(part for part in body if part)
