"""A self-contained HTML report for people: verdict, findings with advice, gradient-flow and
activation-health charts as inline SVG, and the layer table. No scripts, no external assets,
CSS scoped under `.gh-report` so the same fragment can sit inside a Jupyter notebook."""

from __future__ import annotations

import math
from html import escape

from .distribution_charts import layer_distribution_html
from .html_parts import (
    COLORS,
    CSS,
    DEAD_COLOR,
    FLAGGED_COLOR,
    OK_COLOR,
    SATURATED_COLOR,
    SIGNAL_COLOR,
    finding_html,
    flagged_layers,
    layer_label,
    severity_chips,
    svg_open,
)
from .render import format_number as _num
from .render_estimates import estimates_html, gsnr_cell
from .render_run_html import run_html_fragment
from .schema import LayerStats, Report

BAR_HEIGHT, LABEL_WIDTH, PLOT_WIDTH, MAX_CHART_LAYERS = 14, 260, 560, 200


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
    flagged = flagged_layers(report)
    rows = _chart_layers(report)
    logs = _positive_logs([la.grad_rms for la in rows] + [la.output_grad_rms for la in rows])
    if not logs:
        return "<p>No finite, nonzero gradients to chart.</p>"
    low, high = math.floor(min(logs)), math.ceil(max(logs))
    high = max(high, low + 1)
    height = BAR_HEIGHT * len(rows) + 30

    def x_of(value: float) -> float:
        return LABEL_WIDTH + PLOT_WIDTH * (math.log10(value) - low) / (high - low)

    parts = [svg_open(LABEL_WIDTH + PLOT_WIDTH + 20, height, "gh-gradient-chart", "gradient RMS per layer, log scale")]
    for decade in range(low, high + 1):
        x = LABEL_WIDTH + PLOT_WIDTH * (decade - low) / (high - low)
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 20}" stroke="#d0d7de"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle">1e{decade}</text>')
    for i, layer in enumerate(rows):
        y, value, signal = i * BAR_HEIGHT, layer.grad_rms, layer.output_grad_rms
        parts.append(f'<text x="{LABEL_WIDTH - 6}" y="{y + 10}" text-anchor="end">{layer_label(layer.name)}</text>')
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
    flagged = flagged_layers(report)
    row_height = BAR_HEIGHT + 4
    height = row_height * len(rows) + 30
    parts = [
        svg_open(
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
            f"{layer_label(layer.name)} ({escape(act.kind)})</text>"
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


def _layer_table(report: Report) -> str:
    flagged = flagged_layers(report)
    gsnr = any(layer.gsnr is not None for layer in report.layers)  # the column only where some layer has one
    head = (
        "<table><tr><th>layer</th><th>type</th><th>grad RMS</th><th>grad/weight</th><th>output grad RMS</th>"
        "<th>activation</th><th>dead</th><th>saturated</th><th>non-finite</th>"
        + ("<th>GSNR [interval]</th>" if gsnr else "")
        + "</tr>"
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
            f"<td class='num'>{layer.nonfinite or ''}</td>{gsnr_cell(layer.gsnr) if gsnr else ''}</tr>"
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


def _skipped_html(report: Report) -> str:
    """Requested checks that did not run, with the reason: a missing number is explained, not dropped."""
    if not report.skipped:
        return ""
    items = "".join(f"<li><code>{escape(s.check)}</code>: {escape(s.reason)}</li>" for s in report.skipped)
    return f"<h2>Checks not run</h2><ul class='skipped'>{items}</ul>"


def to_html_fragment(report: Report) -> str:
    """The report as one <div class="gh-report"> with its own scoped <style>: for notebooks and pages."""
    if report.kind == "run":
        return run_html_fragment(report)
    color = COLORS.get(report.health, "#57606a")
    m = report.model
    chips = severity_chips(report)
    loss, gnorm = report.metrics.get("loss"), report.metrics.get("global_grad_norm")
    body = [
        f"<div class='gh-report'><style>{CSS}</style>",
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
        *finding_html(report),
        _skipped_html(report),
        estimates_html(report),
        *layer_distribution_html(report),
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
