"""Render reports for people: Markdown for CI summaries and terminals."""

from __future__ import annotations

import math
from typing import TypeGuard

from .schema import Estimate, Finding, Report, Timeline, Verification

_ICON = {"healthy": "✅", "info": "ℹ️", "warning": "⚠️", "error": "❌", "critical": "🛑"}


def format_number(value: float | int | None) -> str:
    """3 significant digits, scientific when tiny or huge; '–' for missing, inf/nan as themselves."""
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


_num = format_number


def step_range(finding: Finding) -> str | None:
    """'steps a–b' for a run finding (None for checkpoint findings), so every renderer words it alike."""
    if finding.step is None:
        return None
    if finding.last_step is None or finding.last_step == finding.step:
        return f"step {finding.step}"
    return f"steps {finding.step}–{finding.last_step}"


def finite(value: float | None) -> TypeGuard[float]:
    """A plottable number: logged (not None) and neither inf nor NaN."""
    return value is not None and math.isfinite(value)


def _scalar(value: object) -> float | int | None:
    """A metric as a number, or None where the report holds none (or a list)."""
    return value if isinstance(value, float | int) else None


def latest(values: list[float | None]) -> float | None:
    """The last finite value of a series: what 'now' means in a run whose newest steps may be unlogged."""
    return next((v for v in reversed(values) if finite(v)), None)


def nonfinite_points(values: list[float | None], counts: list[float | None]) -> int:
    """Points whose value is inf/NaN or whose layer counted non-finite gradient tensors (JSON turns inf into null)."""
    padded = counts + [None] * (len(values) - len(counts))
    return sum(
        1 for v, n in zip(values, padded, strict=False) if (v is not None and not math.isfinite(v)) or (n or 0) > 0
    )


def _finding_lines(finding: Finding) -> list[str]:
    lines = [
        f"### {_ICON.get(finding.severity, '')} {finding.severity}: {finding.title} (`{finding.rule}`)",
        "",
        finding.message,
        "",
    ]
    steps = step_range(finding)
    if steps:
        lines += [steps[0].upper() + steps[1:] + ".", ""]
    if finding.caused_by:
        lines += ["Caused by: " + ", ".join(f"`{rule}`" for rule in finding.caused_by) + " (fix that first).", ""]
    if finding.layers:
        lines += ["Layers: " + ", ".join(f"`{name}`" for name in finding.layers[:12]), ""]
    for fix in finding.remediation:
        lines += [f"- **{fix.action}**: {fix.detail}"]
        if fix.snippet:
            lines += ["", "  ```python", *("  " + row for row in fix.snippet.splitlines()), "  ```"]
        if fix.verification is not None:
            lines += [
                "",
                f"  - *{fix.verification.status.replace('_', ' ')}*: {verification_summary(fix.verification)}",
            ]
            if fix.verification.criterion:
                lines += [f"    (criterion: {fix.verification.criterion})"]
    return lines + [""]


def _loss_span(loss: list[float | None]) -> str:
    """First and last loss of a trial, 'diverged' where the last one is non-finite."""
    first = loss[0] if loss else None
    last = loss[-1] if loss else None
    return f"{format_number(first)} → {format_number(last) if finite(last) else 'diverged'}"


def verification_summary(v: Verification) -> str:
    """One sentence: the remedied trial's loss against the baseline's, or why nothing was tried."""
    if v.baseline is None or v.remediated is None:
        return v.reason or "not tried"
    opt = v.optimizer
    setup = f"{opt.get('name', '?')} lr {format_number(_scalar(opt.get('lr')))}" if opt else "the analysis optimizer"
    return (
        f"loss {_loss_span(v.remediated.loss)} in {v.steps} steps of {setup} with the remedy, "
        f"{_loss_span(v.baseline.loss)} as uploaded; improved: {'yes' if v.improved else 'no'}"
        + (f" ({v.reason})" if v.reason else "")
    )


def _findings(report: Report) -> list[str]:
    lines = ["## Findings", ""] if report.findings else []
    for finding in report.findings:
        lines += _finding_lines(finding)
    return lines


def skipped_lines(report: Report) -> list[str]:
    """Requested checks that did not run, each with its reason: a gap is never silent."""
    if not report.skipped:
        return []
    return ["## Checks not run", "", *(f"- `{s.check}`: {s.reason}" for s in report.skipped), ""]


def interval_text(estimate: Estimate, with_level: bool = True) -> str:
    """'[low, high] at 95%' (or '–' where the estimator gives none): every renderer words an interval alike."""
    if estimate.low is None and estimate.high is None:
        return "–"
    level = f" at {round(estimate.level * 100, 6):g}%" if with_level else ""
    return f"[{_num(estimate.low)}, {_num(estimate.high)}]{level}"


def estimate_items(report: Report) -> list[tuple[str, Estimate]]:
    """The report's estimates, one-batch ones first and then the across-batches ones, each in report order."""
    items = list(report.estimates.items())
    return sorted(items, key=lambda item: item[0].startswith("across_batches."))


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: a pipe or a newline from a stored report cannot split the row."""
    return " ".join(text.replace("|", "\\|").replace("`", "'").split())


def estimate_lines(report: Report) -> list[str]:
    """The estimates table (value, interval, samples, method) and the top Hessian eigenvalues, when present."""
    top = report.spectrum.top_eigenvalues if report.spectrum else []
    if not report.estimates and not top:
        return []
    lines = ["## Estimates", ""]
    if report.estimates:
        lines += ["| estimate | value | interval | samples | method |", "|---|---|---|---|---|"]
        lines += [
            f"| `{_cell(name)}` | {_num(e.value)} | {interval_text(e)} | {e.samples} | {_cell(e.method)} |"
            for name, e in estimate_items(report)
        ]
        lines.append("")
    if top:
        lines += ["Top Hessian eigenvalues: " + ", ".join(_num(v) for v in top) + ".", ""]
    return lines


def _gsnr_cell(estimate: Estimate | None) -> str:
    if estimate is None:
        return ""
    interval = interval_text(estimate, with_level=False)
    return _num(estimate.value) + ("" if interval == "–" else f" {interval}")


def _layer_lines(report: Report, max_layers: int) -> list[str]:
    """The per-layer table; a GSNR column only when some layer has one, so older reports read as before."""
    gsnr = any(layer.gsnr is not None for layer in report.layers)
    lines = [
        "| layer | type | grad norm | grad/weight | output grad RMS | activation | dead | saturated |"
        + (" GSNR [interval] |" if gsnr else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if gsnr else ""),
    ]
    for layer in report.layers[:max_layers]:
        act = layer.activation
        lines.append(
            f"| `{layer.name}` | {layer.type} | {_num(layer.grad_norm)} | {_num(layer.grad_to_weight)} | "
            f"{_num(layer.output_grad_rms)} | {act.kind if act else ''} | "
            f"{_num(act.dead_fraction) if act else ''} | {_num(act.saturated_fraction) if act else ''} |"
            + (f" {_gsnr_cell(layer.gsnr)} |" if gsnr else "")
        )
    if len(report.layers) > max_layers:
        lines.append(f"| … {len(report.layers) - max_layers} more | | | | | | | |" + (" |" if gsnr else ""))
    return lines


def to_markdown(report: Report, max_layers: int = 60) -> str:
    """A Markdown summary: verdict, findings with advice, estimates, and the per-layer gradient table."""
    if report.kind == "run":
        return run_markdown(report)
    lines = [
        f"# gradhealth report {_ICON.get(report.health, '')} {report.health}",
        "",
        report.summary,
        "",
        f"Model: {report.model.format}, {report.model.num_parameters:,} parameters in "
        f"{report.model.num_layers} layers, {report.model.dtype} on {report.model.device}. "
        f"Loss {_num(_scalar(report.metrics.get('loss')))}, "
        f"global gradient norm {_num(_scalar(report.metrics.get('global_grad_norm')))}.",
        "",
        *_findings(report),
        *skipped_lines(report),
        *estimate_lines(report),
        "## Layers",
        "",
        *_layer_lines(report, max_layers),
    ]
    if report.distributions:
        from .distribution_charts import distribution_table  # it imports this module

        lines += ["", *distribution_table(report.distributions)[:-1]]
    return "\n".join(lines) + "\n"


def run_facts(report: Report) -> str:
    """One sentence on what ran and where it stands now, shared by the Markdown and HTML run reports."""
    m, timeline = report.model, report.timeline or Timeline()
    latest_loss, latest_gnorm = latest(timeline.loss), latest(timeline.global_grad_norm)
    loss = report.metrics.get("loss") if latest_loss is None else latest_loss
    gnorm = report.metrics.get("global_grad_norm") if latest_gnorm is None else latest_gnorm
    steps = (
        f"Steps {timeline.steps[0]}–{timeline.steps[-1]} ({len(timeline.steps)} points)"
        if timeline.steps
        else "No steps logged yet"
    )
    return (
        f"Run of a {m.format} model, {m.num_parameters:,} parameters in {m.num_layers} layers, {m.dtype} on {m.device}. "
        f"{steps}. Latest loss {_num(_scalar(loss))}, global gradient norm {_num(_scalar(gnorm))}."
    )


def _run_layer_rows(timeline: Timeline) -> list[str]:
    rows = []
    for name, layer in timeline.layers.items():
        values = [v for v in layer.grad_norm if finite(v)]
        low, high = (min(values), max(values)) if values else (None, None)
        rows.append(
            f"| `{name}` | {_num(latest(layer.grad_norm))} | {_num(low)} | {_num(high)} | "
            f"{nonfinite_points(layer.grad_norm, layer.nonfinite) or ''} |"
        )
    return rows


def run_markdown(report: Report) -> str:
    """A training run in Markdown: verdict, findings with their step ranges, and the charted layers' grad norms."""
    lines = [
        f"# gradhealth run report {_ICON.get(report.health, '')} {report.health}",
        "",
        report.summary,
        "",
        run_facts(report),
        "",
        *_findings(report),
        *estimate_lines(report),
    ]
    timeline = report.timeline
    if timeline is not None and timeline.layers:
        lines += [
            "## Layers",
            "",
            "| layer | latest grad norm | min | max | non-finite points |",
            "|---|---|---|---|---|",
            *_run_layer_rows(timeline),
            "",
        ]
    from .distribution_charts import distribution_markdown  # it imports this module

    lines += distribution_markdown(timeline)
    while lines and not lines[-1]:  # one final newline, as reports without distributions always had
        lines.pop()
    return "\n".join(lines) + "\n"
