"""Inline SVG charts of the noise and curvature statistics: per-layer GSNR with its interval, the Hessian's
top eigenvalues as stems and its spectral density as a line. Each returns "" when the report has no data."""

from __future__ import annotations

import math
from html import escape

from .chart_scale import Scale, scale_for, wants_log
from .html_parts import OK_COLOR, layer_label, svg_open
from .render import finite, interval_text
from .render import format_number as _num
from .schema import Estimate, LayerStats, Report

ROW, LABEL_WIDTH, PLOT_WIDTH, AXIS_HEIGHT, MAX_GSNR_LAYERS = 16, 260, 560, 30, 200
SPECTRUM_WIDTH, SPECTRUM_HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 470, 214, 56, 12, 16, 40
WHISKER_COLOR, DENSITY_COLOR = "#57606a", "#8250df"


def _bounds(e: Estimate) -> list[float]:
    """The interval's finite ends: what the axis must also cover."""
    return [v for v in (e.low, e.high) if finite(v)]


def gsnr_layers(report: Report) -> list[LayerStats]:
    """Layers with a GSNR, in the report's (depth) order."""
    return [layer for layer in report.layers if layer.gsnr is not None][:MAX_GSNR_LAYERS]


def _x_axis(scale: Scale, top: float, bottom: float) -> list[str]:
    """Vertical grid lines with their labels under the plot."""
    parts = []
    for value, text in scale.ticks():
        x = scale(value)
        parts.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="#d0d7de"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 14:.1f}" text-anchor="middle">{escape(text)}</text>')
    return parts


def _y_axis(scale: Scale, left: float, right: float) -> list[str]:
    """Horizontal grid lines with their labels left of the plot."""
    parts = []
    for value, text in scale.ticks():
        y = scale(value)
        parts.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>')
        parts.append(f'<text x="{left - 4:.1f}" y="{y + 3:.1f}" text-anchor="end">{escape(text)}</text>')
    return parts


def _gsnr_row(layer: LayerStats, e: Estimate, y: float, x: Scale) -> list[str]:
    """A layer's label, its interval as a capped whisker, and its value as a dot; each titled with the numbers."""
    mid, what = y + ROW / 2, f"{escape(layer.name)}: GSNR {_num(e.value)} {escape(interval_text(e))}"
    parts = [f'<text x="{LABEL_WIDTH - 6}" y="{y + 11:.1f}" text-anchor="end">{layer_label(layer.name)}</text>']
    if _bounds(e) and finite(e.value):
        lo, hi = x(e.low if finite(e.low) else e.value), x(e.high if finite(e.high) else e.value)
        parts.append(
            f'<path class="gh-whisker" data-layer="{escape(layer.name)}" d="M{lo:.1f},{mid - 4:.1f} V{mid + 4:.1f} '
            f'M{lo:.1f},{mid:.1f} H{hi:.1f} M{hi:.1f},{mid - 4:.1f} V{mid + 4:.1f}" stroke="{WHISKER_COLOR}" '
            f'stroke-width="1.5" fill="none"><title>{what}</title></path>'
        )
    if finite(e.value):
        parts.append(
            f'<circle class="gh-gsnr-point" data-layer="{escape(layer.name)}" cx="{x(e.value):.1f}" cy="{mid:.1f}" '
            f'r="3.5" fill="{OK_COLOR}"><title>{what}, {e.samples} samples</title></circle>'
        )
    else:
        parts.append(f'<text x="{LABEL_WIDTH + 4}" y="{y + 11:.1f}" fill="#cf222e">{escape(_num(e.value))}</text>')
    return parts


def gsnr_chart(report: Report) -> str:
    """One row per layer with a GSNR, input side at the top: a dot at the value, a whisker over its interval."""
    rows = gsnr_layers(report)
    estimates = [layer.gsnr for layer in rows if layer.gsnr is not None]
    values = [e.value for e in estimates if finite(e.value)]
    if not values:
        return ""
    x = scale_for(values, [b for e in estimates for b in _bounds(e)], LABEL_WIDTH, LABEL_WIDTH + PLOT_WIDTH)
    height = ROW * len(rows) + AXIS_HEIGHT
    label = f"gradient signal-to-noise ratio per layer with intervals, {'log' if x.log else 'linear'} scale"
    parts = [svg_open(LABEL_WIDTH + PLOT_WIDTH + 20, height, "gh-gsnr-chart", label)]
    parts += _x_axis(x, 0, height - AXIS_HEIGHT + 4)
    for i, (layer, e) in enumerate(zip(rows, estimates, strict=True)):
        parts += _gsnr_row(layer, e, i * ROW, x)
    parts.append("</svg>")
    return "".join(parts)


def _axis_title(text: str) -> str:
    """What the horizontal axis counts, under its tick labels: the numbers alone do not say."""
    middle = (LEFT + SPECTRUM_WIDTH - RIGHT) / 2
    return f'<text x="{middle:.1f}" y="{SPECTRUM_HEIGHT - 6}" text-anchor="middle" fill="#57606a">{escape(text)}</text>'


def _rank_x(rank: int, count: int) -> float:
    """The centre of the rank's band: stems never sit on the plot's border."""
    return LEFT + (SPECTRUM_WIDTH - LEFT - RIGHT) * (rank + 0.5) / count


def spectrum_chart(report: Report) -> str:
    """The top eigenvalues, largest first, as stems from zero (from the bottom edge on a log axis)."""
    top = [v for v in (report.spectrum.top_eigenvalues if report.spectrum else []) if finite(v)]
    if not top:
        return ""
    bottom = SPECTRUM_HEIGHT - BOTTOM
    y = scale_for(top, [] if wants_log(top) else [0.0], bottom, TOP)
    base = bottom if y.log else y(0.0)
    label = f"top {len(top)} Hessian eigenvalues, {'log' if y.log else 'linear'} scale"
    parts = [svg_open(SPECTRUM_WIDTH, SPECTRUM_HEIGHT, "gh-spectrum-chart", label)]
    parts += _y_axis(y, LEFT, SPECTRUM_WIDTH - RIGHT)
    every = max(1, math.ceil(len(top) * 24 / (SPECTRUM_WIDTH - LEFT - RIGHT)))  # rank labels 24 px apart
    for rank, value in enumerate(top):
        cx = _rank_x(rank, len(top))
        parts.append(
            f'<line class="gh-stem" x1="{cx:.1f}" y1="{base:.1f}" x2="{cx:.1f}" y2="{y(value):.1f}" '
            f'stroke="{OK_COLOR}" stroke-width="2"/>'
            f'<circle class="gh-eigenvalue" cx="{cx:.1f}" cy="{y(value):.1f}" r="3.5" fill="{OK_COLOR}">'
            f"<title>eigenvalue {rank + 1}: {_num(value)}</title></circle>"
        )
        if rank % every == 0:
            parts.append(
                f'<text x="{cx:.1f}" y="{SPECTRUM_HEIGHT - BOTTOM + 14}" text-anchor="middle">{rank + 1}</text>'
            )
    parts.append(_axis_title("rank"))
    parts.append("</svg>")
    return "".join(parts)


def _density_points(report: Report) -> list[tuple[float, float]]:
    """(eigenvalue, density) pairs to draw: none when the lists disagree in length or too few are finite."""
    spectrum = report.spectrum
    if spectrum is None or len(spectrum.density_grid) != len(spectrum.density):
        return []
    points = [(g, d) for g, d in zip(spectrum.density_grid, spectrum.density, strict=True) if finite(g) and finite(d)]
    return points if len(points) >= 2 else []


def density_chart(report: Report) -> str:
    """The spectral density over eigenvalue as one line (log density when it spans decades); "" without a density."""
    points = _density_points(report)
    if not points:
        return ""
    bottom = SPECTRUM_HEIGHT - BOTTOM
    x = scale_for([g for g, _ in points], [], LEFT, SPECTRUM_WIDTH - RIGHT, log=False)
    y = scale_for([d for _, d in points], [], bottom, TOP)
    label = f"Hessian spectral density over eigenvalue, {'log' if y.log else 'linear'} density"
    parts = [svg_open(SPECTRUM_WIDTH, SPECTRUM_HEIGHT, "gh-density-chart", label)]
    parts += _y_axis(y, LEFT, SPECTRUM_WIDTH - RIGHT)
    parts += [
        f'<text x="{x(value):.1f}" y="{SPECTRUM_HEIGHT - BOTTOM + 14}" text-anchor="middle">{escape(text)}</text>'
        for value, text in x.ticks()
    ]
    d = "M" + " L".join(f"{x(g):.1f},{y(v):.1f}" for g, v in points)
    parts.append(
        f'<path class="gh-density" d="{d}" fill="none" stroke="{DENSITY_COLOR}" stroke-width="1.5" '
        f'stroke-linejoin="round"><title>spectral density on {len(points)} grid points</title></path>'
    )
    parts.append(_axis_title("eigenvalue"))
    parts.append("</svg>")
    return "".join(parts)
