"""Distributions over time, as TensorBoard draws them: nested quantile bands per layer (SVG), and a Markdown summary.

Each chart shades the bands between symmetric quantile pairs of the layer's sketches (min-max,
6.68-93.32%, 15.87-84.13%, 30.85-69.15%: the extremes and +-1.5, 1, 0.5 sigma of a normal), darker
towards the middle, with the median as a line. A step whose sketch has no finite value is left out (bands join its neighbours).
"""

from __future__ import annotations

from html import escape

from .chart_scale import nice_step, value_range
from .html_parts import layer_label, svg_open
from .render import finite
from .render import format_number as _num
from .schema import ActivationSeries, LayerDistribution, Report, Timeline

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 470, 130, 56, 12, 10, 20
BAND_COLOR = "#0969da"
PAIRS = ((0, 8), (1, 7), (2, 6), (3, 5))
OPACITY = (0.15, 0.25, 0.35, 0.5)
MEDIAN = 4


def _complete(rows: list[list[float | None]]) -> list[int]:
    return [i for i, row in enumerate(rows) if len(row) == 9 and all(finite(v) for v in row)]


def band_chart(
    steps: list[int], rows: list[list[float | None]], label: str, ends: tuple[str, str] | None = None
) -> str:
    """Quantile bands over steps (or, with `ends` naming the first and last, over layers); "" without finite values."""
    kept = _complete(rows)
    if not kept:
        return ""
    values = [float(v) for i in kept for v in rows[i] if v is not None]
    low, high = value_range(values, False)
    first, last = steps[kept[0]], steps[kept[-1]]

    def x(step: int) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * (step - first) / max(last - first, 1)

    def y(value: float) -> float:
        return HEIGHT - BOTTOM - (HEIGHT - BOTTOM - TOP) * (value - low) / ((high - low) or 1.0)

    per = "layer" if ends else "step"
    parts = [svg_open(WIDTH, HEIGHT, "gh-dist-chart", f"{label}: quantile bands per {per}")]
    for (lo, hi), opacity in zip(PAIRS, OPACITY, strict=True):
        upper = [f"{x(steps[i]):.1f},{y(rows[i][hi] or 0.0):.1f}" for i in kept]
        lower = [f"{x(steps[i]):.1f},{y(rows[i][lo] or 0.0):.1f}" for i in reversed(kept)]
        parts.append(
            f'<polygon class="gh-band" points="{" ".join(upper + lower)}" fill="{BAND_COLOR}" '
            f'fill-opacity="{opacity}" stroke="none"/>'
        )
    median = " ".join(f"{x(steps[i]):.1f},{y(rows[i][MEDIAN] or 0.0):.1f}" for i in kept)
    parts.append(
        f'<polyline class="gh-median" points="{median}" fill="none" stroke="{BAND_COLOR}" stroke-width="1.2"/>'
    )
    tick = nice_step((high - low) / 4)
    level = low
    while level <= high + tick / 2:
        parts.append(
            f'<text x="{LEFT - 4}" y="{y(level) + 3:.1f}" text-anchor="end" font-size="10">{_num(level)}</text>'
        )
        level += tick
    left, right = ends or (f"step {first}", f"step {last}")
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 4}" font-size="10">{escape(left)}</text>')
    parts.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 4}" text-anchor="end" font-size="10">{escape(right)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def distribution_html(report: Report) -> list[str]:
    """The run report's distribution section: a gradient and a weight band chart per charted layer."""
    timeline = report.timeline
    if timeline is None or not timeline.distributions:
        return []
    figures = []
    for name, dist in timeline.distributions.items():
        for kind, rows in (("gradient", dist.grad), ("weight", dist.weight)):
            chart = band_chart(dist.steps, rows, f"{name} {kind}")
            if chart:
                figures.append(
                    f"<figure class='gh-dist'><figcaption>{layer_label(name)} — {kind}</figcaption>{chart}</figure>"
                )
    return [
        "<h2>Distributions</h2>",
        "<p><small>Per layer, the gradient and weight values at each sketched step: shaded from the min-max band "
        "to the 30.85-69.15% band, the line is the median (TensorBoard's distributions).</small></p>",
        *figures,
    ]


def layer_distribution_html(report: Report) -> list[str]:
    """An analysis's distributions: the gradient and the weight quantile bands across layers, in data-flow order."""
    names = [n for n, d in report.distributions.items() if d.grad]
    if len(names) < 2:  # bands need two layers to span
        return []
    figures = []
    for kind in ("gradient", "weight"):
        rows = [(d.grad if kind == "gradient" else d.weight)[-1] for d in (report.distributions[n] for n in names)]
        chart = band_chart(list(range(len(names))), rows, f"{kind} per layer", (names[0], names[-1]))
        if chart:
            figures.append(f"<figure class='gh-dist'><figcaption>{kind} values per layer</figcaption>{chart}</figure>")
    if not figures:
        return []
    return [
        "<h2>Distributions</h2>",
        "<p><small>Across layers (input side on the left), the values of each layer's gradient and weights on "
        "this batch: shaded from the min-max band to the 30.85-69.15% band, the line is the median "
        "(Cockpit's gradient histograms, as TensorBoard's distributions). The Markdown report lists them.</small></p>",
        *figures,
    ]


def _latest(dist: LayerDistribution, rows: list[list[float | None]]) -> list[float | None]:
    kept = _complete(rows)
    return rows[kept[-1]] if kept else [None] * 9


def _share(values: list[float | None], counts: list[float | None]) -> str:
    pairs = [(v, c) for v, c in zip(values, counts, strict=False) if finite(v) and finite(c) and c]
    return f"{100 * pairs[-1][0] / pairs[-1][1]:.1f}%" if pairs else "—"


def _activation_rows(activations: dict[str, ActivationSeries]) -> list[str]:
    rows = []
    for name, series in activations.items():
        dead = [v for v in series.dead if finite(v)]
        saturated = [v for v in series.saturated if finite(v)]
        rows.append(
            f"| `{name}` | {series.kind} | {_pct(dead[-1] if dead else None)} | {_pct(max(dead, default=None))} | "
            f"{_pct(saturated[-1] if saturated else None)} | {_pct(max(saturated, default=None))} |"
        )
    return rows


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def distribution_table(distributions: dict[str, LayerDistribution]) -> list[str]:
    """The Markdown table of each layer's latest sketch; [] without distributions."""
    if not distributions:
        return []
    lines = [
        "## Distributions",
        "",
        "| layer | sketches | grad min | grad median | grad max | grad zeros | weight median | weight 15.87–84.13% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, dist in distributions.items():
        grad, weight = _latest(dist, dist.grad), _latest(dist, dist.weight)
        lines.append(
            f"| `{name}` | {len(dist.steps)} | {_num(grad[0])} | {_num(grad[4])} | {_num(grad[8])} | "
            f"{_share(dist.grad_zeros, dist.count)} | {_num(weight[4])} | {_num(weight[2])} – {_num(weight[6])} |"
        )
    return [*lines, ""]


def distribution_markdown(timeline: Timeline | None) -> list[str]:
    """Markdown tables: each charted layer's latest sketch, and each activation's dead/saturated fractions."""
    lines = distribution_table(timeline.distributions if timeline is not None else {})
    if timeline is not None and timeline.activations:
        lines += [
            "## Activations",
            "",
            "| activation | kind | dead (latest) | dead (max) | saturated (latest) | saturated (max) |",
            "|---|---|---|---|---|---|",
            *_activation_rows(timeline.activations),
            "",
        ]
    return lines
