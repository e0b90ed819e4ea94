"""Render a run comparison: Markdown for CI summaries, and HTML whose charts overlay the runs, with a selector
that shows or hides each run's lines (checkboxes and CSS only: the page stays script-free under its CSP)."""

from __future__ import annotations

import hashlib
import math
import statistics
from html import escape

from .chart_scale import value_range, wants_log
from .html_parts import COLORS, CSS, finding_html, layer_label, svg_open
from .render import finite, latest, step_range
from .render import format_number as _num
from .render_run_html import (
    LAYER_HEIGHT,
    LAYER_WIDTH,
    PLOT_TOP,
    RUN_HEIGHT,
    RUN_WIDTH,
    Frame,
    Series,
    _axes,
    _drawable,
)
from .run_compare import ComparedRun, RunComparison, RunValues
from .schema import ModelInfo, Report, severity_at_least

# One colour per run (at most 8, Tableau 10: none is a severity colour), from the fifth on with a dash pattern too.
RUN_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f")
_DASH = ("", "", "", "", ' stroke-dasharray="6 3"', ' stroke-dasharray="6 3"', ' stroke-dasharray="2 2"', "")
_ICON = {"healthy": "✅", "warning": "⚠️", "error": "❌", "critical": "🛑"}
_NO_MODEL = ModelInfo(format="watch", num_parameters=0, num_layers=0, dtype="", device="")
_COMPARE_CSS = """
.gh-run-compare fieldset.gh-run-selector{border:1px solid #d0d7de;border-radius:6px;padding:.3rem .8rem .5rem}
.gh-run-compare fieldset.gh-run-selector label{display:inline-block;margin:.15rem 1.2rem .15rem 0;cursor:pointer}
.gh-run-compare fieldset.gh-run-selector input:focus-visible{outline:2px solid #0969da;outline-offset:2px}
.gh-run-compare figure{display:inline-block;margin:0 8px 10px 0;vertical-align:top}
.gh-run-compare figcaption{font-size:12px;font-family:monospace}
.gh-run-compare td.first{font-weight:600}
"""


def _key(comparison: RunComparison) -> str:
    """A short id unique to these runs, so two comparisons on one page keep their own checkboxes."""
    return hashlib.sha256(",".join(r.id for r in comparison.runs).encode()).hexdigest()[:10]


def _selector_css(comparison: RunComparison) -> str:
    """Unticking run i's box hides every mark of class gh-run-i in this comparison's charts."""
    return "".join(
        f".gh-run-compare:has(.gh-run-toggle-{i}:not(:checked)) .gh-compare-charts .gh-run-{i}{{display:none}}"
        for i in range(len(comparison.runs))
    )


def _run_label(run: ComparedRun) -> str:
    return f"{escape(run.name)} <code>{escape(run.id[:8])}</code>"


def _selector(comparison: RunComparison) -> str:
    """A labelled checkbox per run: Tab reaches each, Space toggles it; the swatch is the run's line colour."""
    key, items = _key(comparison), []
    for i, run in enumerate(comparison.runs):
        color = COLORS.get(run.health, "#57606a")
        items.append(
            f'<label><input type="checkbox" class="gh-run-toggle gh-run-toggle-{i}" id="gh-cmp-{key}-{i}" '
            f'data-run="{escape(run.id)}" checked> <span class="swatch" style="background:{RUN_COLORS[i]}"></span>'
            f"{_run_label(run)} <span class='badge' style='background:{color}'>{escape(run.health)}</span></label>"
        )
    return (
        "<fieldset class='gh-run-selector'><legend>Runs shown in the charts (untick to hide a run's lines)</legend>"
        + "".join(items)
        + "</fieldset>"
    )


def _markers(frame: Frame, run: ComparedRun, color: str) -> list[str]:
    """A thin dashed line in the run's colour at the first step of each of its findings at warning or above."""
    parts = []
    for f in run.findings:
        if f.step is None or not severity_at_least(f.severity, "warning"):
            continue
        x = frame.x(f.step)
        parts.append(
            f'<line class="gh-run-marker" data-rule="{escape(f.rule)}" data-step="{f.step}" x1="{x:.1f}" '
            f'y1="{PLOT_TOP}" x2="{x:.1f}" y2="{frame.bottom:.1f}" stroke="{color}" stroke-width="1" '
            f'stroke-dasharray="3 3" stroke-opacity="0.8"><title>{escape(run.name)}: {escape(f.rule)} '
            f"({f.severity}), {escape(step_range(f) or '')}</title></line>"
        )
    return parts


def _stretches(frame: Frame, steps: list[int], series: Series) -> list[list[tuple[float, float]]]:
    """The run's own points joined up: on the shared axis a run logging every k-th step has nulls between its
    points, so a line breaks only where its records are more than 1.5x its usual interval apart."""
    kept = [i for i, v in enumerate(series.values) if v is not None and math.isfinite(v)]
    gaps = [steps[b] - steps[a] for a, b in zip(kept, kept[1:], strict=False)]
    usual = statistics.median(gaps) if gaps else 1
    stretches: list[list[tuple[float, float]]] = []
    for previous, i in zip([None, *kept], kept, strict=False):
        if previous is None or steps[i] - steps[previous] > 1.5 * usual:
            stretches.append([])
        value = series.values[i]
        assert value is not None
        stretches[-1].append((frame.x(steps[i]), frame.y(value)))
    return stretches


def _path(frame: Frame, steps: list[int], series: Series, dash: str) -> list[str]:
    """The run's line, a new subpath after each gap in its records; a lone point gets a dot."""
    runs = _stretches(frame, steps, series)
    if not runs:
        return []
    d = " ".join("M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in run) for run in runs)
    parts = [
        f'<path class="gh-series" d="{d}" fill="none" stroke="{series.color}" stroke-width="1.5"{dash} '
        f'stroke-linejoin="round"><title>{escape(series.name)}</title></path>'
    ]
    parts += [
        f'<circle cx="{r[0][0]:.1f}" cy="{r[0][1]:.1f}" r="2" fill="{series.color}"/>' for r in runs if len(r) == 1
    ]
    return parts


def _series(comparison: RunComparison, values: RunValues, what: str) -> list[Series]:
    n = len(comparison.steps)
    out = []
    for i, run in enumerate(comparison.runs):
        vals = (values.get(run.id, []) + [None] * n)[:n]
        bad = [v is not None and not math.isfinite(v) for v in vals]
        out.append(Series(f"{run.name}: {what}", vals, RUN_COLORS[i], bad))
    return out


def overlay_chart(
    comparison: RunComparison,
    values: RunValues,
    what: str,
    css_class: str,
    size: tuple[int, int] = (RUN_WIDTH, RUN_HEIGHT),
    log: bool | None = None,
    shared: tuple[float, float] | None = None,
) -> str:
    """Every run's series on one step axis, each run in its own <g class="gh-run gh-run-i"> with its markers."""
    steps, series = comparison.steps, _series(comparison, values, what)
    drawable = _drawable(series)
    log = wants_log(drawable) if log is None else log
    low, high = shared or value_range(drawable, log)
    frame = Frame(size[0], size[1], steps[0], steps[-1], low, high, log)
    label = f"{what} per step of {len(series)} runs, {'log' if log else 'linear'} scale"
    parts = [svg_open(size[0], size[1], f"gh-time-chart gh-compare-chart {css_class}", label), *_axes(frame)]
    if not drawable:
        parts.append(f'<text x="{frame.x(steps[0]) + 8:.1f}" y="{(PLOT_TOP + frame.bottom) / 2:.1f}">no values</text>')
    for i, (run, s) in enumerate(zip(comparison.runs, series, strict=True)):
        parts.append(f'<g class="gh-run gh-run-{i}" data-run="{escape(run.id)}">')
        parts += _markers(frame, run, s.color) + _path(frame, steps, s, _DASH[i]) + ["</g>"]
    parts.append("</svg>")
    return "".join(parts)


def _layer_figures(comparison: RunComparison) -> str:
    """Small multiples, one per charted layer, every run overlaid, one shared log scale across layers."""
    every = [
        v for per_run in comparison.layers.values() for vals in per_run.values() for v in vals if finite(v) and v > 0
    ]
    shared = value_range(every, log=True)
    figures = [
        f"<figure><figcaption>{layer_label(name)}</figcaption>"
        + overlay_chart(
            comparison, per_run, f"{name} gradient norm", "gh-layer-chart", (LAYER_WIDTH, LAYER_HEIGHT), True, shared
        )
        + "</figure>"
        for name, per_run in comparison.layers.items()
    ]
    return "<div class='gh-layers'>" + "".join(figures) + "</div>"


def _charts(comparison: RunComparison) -> list[str]:
    if not comparison.steps:
        return ["<h2>Training curves</h2>", "<p>None of these runs has logged a step yet.</p>"]
    every = f"each point covers up to {comparison.bucket_steps} steps" if comparison.bucket_steps > 1 else "per step"
    parts = [
        "<div class='gh-compare-charts'>",
        "<h2>Training curves</h2>",
        f"<p><small>Aligned by step ({every}); a run's line joins its own records and breaks where more than 1.5x "
        "its usual logging interval has no finite value (unlogged, or non-finite). Dashed "
        "vertical lines in a run's colour mark the first step of its findings.</small></p>",
        "<h3>Loss</h3>",
        overlay_chart(comparison, comparison.loss, "loss", "gh-loss-chart"),
        "<h3>Global gradient norm</h3>",
        overlay_chart(
            comparison, comparison.global_grad_norm, "global gradient norm", "gh-global-norm-chart", log=True
        ),
    ]
    if any(finite(v) for vals in comparison.lr.values() for v in vals):
        parts += ["<h3>Learning rate</h3>", overlay_chart(comparison, comparison.lr, "learning rate", "gh-lr-chart")]
    if comparison.layers:
        parts += ["<h2>Gradient norm per layer</h2>", _layer_figures(comparison)]
    return [*parts, "</div>"]


def _timing_cell(step: int | None, severity: str | None) -> str:
    """'120 (error)' where the rule fired, '(info)' for a finding without a step, '–' where it did not fire."""
    if severity is None:
        return "–"
    return f"({severity})" if step is None else f"{step} ({severity})"


def _timing_table(comparison: RunComparison) -> str:
    runs = comparison.runs
    head = "".join(f"<th>{_run_label(r)}</th>" for r in runs)
    rows = []
    for t in comparison.rules:
        fired = [s for s in t.first_step.values() if s is not None]
        cells = []
        for r in runs:
            step = t.first_step.get(r.id)
            text = _timing_cell(step, t.severity.get(r.id))
            first = " class='first'" if step is not None and len(fired) > 1 and step == min(fired) else ""
            cells.append(f"<td{first}>{escape(text)}</td>")
        spread = "" if t.spread is None else str(t.spread)
        rows.append(f"<tr><td><code>{escape(t.rule)}</code></td>{''.join(cells)}<td>{spread}</td></tr>")
    return f"<table><tr><th>rule</th>{head}<th>spread (steps)</th></tr>{''.join(rows)}</table>"


def _findings(comparison: RunComparison) -> list[str]:
    parts = ["<h2>Findings per run</h2>"]
    for i, run in enumerate(comparison.runs):
        parts.append(
            f"<h3><span class='swatch' style='background:{RUN_COLORS[i]}'></span>{_run_label(run)}: "
            f"{len(run.findings)} finding{'s' if len(run.findings) != 1 else ''}</h3>"
        )
        holder = Report(id=run.id, kind="run", health="healthy", summary="", model=_NO_MODEL, findings=run.findings)
        parts += finding_html(holder) or ["<p>No findings.</p>"]
    return parts


def summary(comparison: RunComparison) -> str:
    """One sentence: how many runs, the shared step range and how it was aligned."""
    n, steps = len(comparison.runs), comparison.steps
    if not steps:
        return f"{n} runs compared; none has logged a step yet."
    every = f", up to {comparison.bucket_steps} steps per point" if comparison.bucket_steps > 1 else ", one per step"
    return f"{n} runs aligned by step over steps {steps[0]}–{steps[-1]} ({len(steps)} points{every})."


def compare_html_fragment(comparison: RunComparison) -> str:
    """The comparison as one <div class="gh-report gh-run-compare">: selector, overlaid charts, timings, findings."""
    body = [
        f"<div class='gh-report gh-run-compare'><style>{CSS}{_COMPARE_CSS}{_selector_css(comparison)}</style>",
        "<h1>gradhealth run comparison</h1>",
        f"<p>{escape(summary(comparison))}</p>",
        _selector(comparison),
        *_charts(comparison),
        "<h2>When each rule first fired</h2>",
        _timing_table(comparison) if comparison.rules else "<p>No rule fired in any of these runs.</p>",
        *_findings(comparison),
        "</div>",
    ]
    return "\n".join(part for part in body if part)


def compare_html(comparison: RunComparison) -> str:
    """One self-contained page, no scripts and nothing loaded: the same CSP as a run report."""
    names = ", ".join(r.name for r in comparison.runs)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>gradhealth run comparison: {escape(names)}</title>"
        "<style>body{margin:2rem auto;max-width:1000px;padding:0 1rem;background:#fff}</style></head><body>\n"
        + compare_html_fragment(comparison)
        + "\n</body></html>\n"
    )


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("`", "'")


def compare_markdown(comparison: RunComparison) -> str:
    """The runs, when each rule first fired in each, and each run's findings with their step ranges."""
    runs = comparison.runs
    lines = ["# gradhealth run comparison", "", summary(comparison), "", "| run | id | health | steps | latest loss |"]
    lines.append("|---|---|---|---|---|")
    for r in runs:
        steps = "–" if r.first_step is None else f"{r.run_steps} ({r.first_step}–{r.last_step})"
        loss = _num(latest(comparison.loss.get(r.id, [])))
        lines.append(f"| {_cell(r.name)} | `{r.id}` | {_ICON.get(r.health, '')} {r.health} | {steps} | {loss} |")
    lines += ["", "## When each rule first fired", ""]
    if comparison.rules:
        lines.append("| rule | " + " | ".join(_cell(r.name) for r in runs) + " | spread (steps) |")
        lines.append("|---" * (len(runs) + 2) + "|")
        for t in comparison.rules:
            cells = [_timing_cell(t.first_step.get(r.id), t.severity.get(r.id)) for r in runs]
            spread = "" if t.spread is None else str(t.spread)
            lines.append(f"| `{t.rule}` | " + " | ".join(cells) + f" | {spread} |")
    else:
        lines.append("No rule fired in any of these runs.")
    lines += ["", "## Findings per run", ""]
    for r in runs:
        lines.append(f"### {_cell(r.name)} (`{r.id}`)")
        lines.append("")
        lines += [f"- {f.severity}: {f.title} (`{f.rule}`, {step_range(f) or 'no step'})" for f in r.findings]
        lines += ["No findings." if not r.findings else "", ""]
    return "\n".join(lines).rstrip() + "\n"
