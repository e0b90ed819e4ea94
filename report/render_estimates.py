"""The HTML section for noise and curvature statistics: the estimates table with intervals, per-layer GSNR and
the Hessian spectrum as inline SVG. Empty when the report holds none, so older reports render as before."""

from __future__ import annotations

from html import escape

from .estimate_charts import DENSITY_COLOR, WHISKER_COLOR, density_chart, gsnr_chart, spectrum_chart
from .html_parts import OK_COLOR
from .render import estimate_items, interval_text
from .render import format_number as _num
from .schema import Estimate, Report


def legend(*items: tuple[str, str]) -> str:
    """Coloured swatches naming what each mark of a chart is."""
    spans = "".join(
        f"<span><i class='swatch' style='background:{color}'></i>{escape(text)}</span>" for color, text in items
    )
    return f"<p class='legend'>{spans}</p>"


def estimates_table(report: Report) -> str:
    """One row per estimate: value, interval at its level, how many samples, and which method gave it."""
    if not report.estimates:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape(name)}</code></td><td class='num'>{escape(_num(e.value))}</td>"
        f"<td class='num'>{escape(interval_text(e))}</td><td class='num'>{e.samples}</td>"
        f"<td>{escape(e.method)}</td></tr>"
        for name, e in estimate_items(report)
    )
    head = "<tr><th>estimate</th><th>value</th><th>interval</th><th>samples</th><th>method</th></tr>"
    return f"<table class='gh-estimates'>{head}{rows}</table>"


def gsnr_cell(estimate: Estimate | None) -> str:
    """A layer table cell: the GSNR and its interval, escaped."""
    if estimate is None:
        return "<td class='num'></td>"
    interval = interval_text(estimate, with_level=False)
    return f"<td class='num'>{escape(_num(estimate.value))} <small>{'' if interval == '–' else escape(interval)}</small></td>"


def _gsnr_section(report: Report) -> list[str]:
    """Heading, how to read it, legend and chart; [] when no layer has a GSNR."""
    chart = gsnr_chart(report)
    if not chart:
        return []
    return [
        "<h2>Gradient signal-to-noise per layer</h2>",
        "<p><small>Input side at the top. GSNR is the squared mean of a layer's per-sample gradient over its "
        "variance: well above 1, the samples agree on the direction; well below 1, the step is mostly noise. "
        "Whiskers span each value's interval.</small></p>",
        legend((OK_COLOR, "GSNR"), (WHISKER_COLOR, "interval")),
        chart,
    ]


def _spectrum_section(report: Report) -> list[str]:
    """Heading, how to read it, legend and the stem and density charts; [] without a spectrum."""
    stems, density = spectrum_chart(report), density_chart(report)
    if not (stems or density):
        return []
    return [
        "<h2>Curvature spectrum</h2>",
        "<p><small>The loss Hessian's largest eigenvalues (sharpness: a step larger than 2/λ<sub>max</sub> "
        "diverges along that direction) and, when estimated, the density of its whole spectrum.</small></p>",
        legend(*([(OK_COLOR, "top eigenvalues")] if stems else []), *([(DENSITY_COLOR, "density")] if density else [])),
        f"<div class='gh-spectrum'>{stems}{density}</div>",
    ]


def estimates_html(report: Report) -> str:
    """The estimates table and charts; "" for a report without noise or curvature statistics."""
    table = estimates_table(report)
    parts = ["<h2>Estimates</h2>", table] if table else []
    parts += _gsnr_section(report) + _spectrum_section(report)
    return "\n".join(parts)
