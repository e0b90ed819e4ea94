"""Render reports for people: Markdown for CI summaries and terminals."""

from __future__ import annotations

import math

from gradhealth.diagnostics.schema import Report

_ICON = {"healthy": "✅", "info": "ℹ️", "warning": "⚠️", "error": "❌", "critical": "🛑"}


def format_number(value: float | int | None) -> str:
    """3 significant digits, scientific when tiny or huge; '–' for missing, inf/nan as themselves."""
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


_num = format_number


def to_markdown(report: Report, max_layers: int = 60) -> str:
    """A Markdown summary: verdict, findings with advice, and the per-layer gradient table."""
    lines = [
        f"# gradhealth report {_ICON.get(report.health, '')} {report.health}",
        "",
        report.summary,
        "",
        f"Model: {report.model.format}, {report.model.num_parameters:,} parameters in "
        f"{report.model.num_layers} layers, {report.model.dtype} on {report.model.device}. "
        f"Loss {_num(report.metrics.get('loss'))}, global gradient norm {_num(report.metrics.get('global_grad_norm'))}.",  # type: ignore[arg-type]
        "",
    ]
    if report.findings:
        lines += ["## Findings", ""]
    for finding in report.findings:
        lines += [
            f"### {_ICON.get(finding.severity, '')} {finding.severity}: {finding.title} (`{finding.rule}`)",
            "",
            finding.message,
            "",
        ]
        if finding.layers:
            lines += ["Layers: " + ", ".join(f"`{name}`" for name in finding.layers[:12]), ""]
        for fix in finding.remediation:
            lines += [f"- **{fix.action}**: {fix.detail}"]
            if fix.snippet:
                lines += ["", "  ```python", *("  " + row for row in fix.snippet.splitlines()), "  ```"]
        lines += [""]
    lines += [
        "## Layers",
        "",
        "| layer | type | grad norm | grad/weight | output grad RMS | activation | dead | saturated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for layer in report.layers[:max_layers]:
        act = layer.activation
        lines.append(
            f"| `{layer.name}` | {layer.type} | {_num(layer.grad_norm)} | {_num(layer.grad_to_weight)} | "
            f"{_num(layer.output_grad_rms)} | {act.kind if act else ''} | "
            f"{_num(act.dead_fraction) if act else ''} | {_num(act.saturated_fraction) if act else ''} |"
        )
    if len(report.layers) > max_layers:
        lines.append(f"| … {len(report.layers) - max_layers} more | | | | | | | |")
    return "\n".join(lines) + "\n"
