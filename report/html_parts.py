"""The HTML pieces the checkpoint and run renderers share: palette, scoped CSS, finding cards, severity
chips and SVG helpers. Public so both renderers build on one implementation."""

from __future__ import annotations

from html import escape

from .render import format_number as _num
from .render import step_range
from .schema import Finding, Report
from .verify_charts import verification_html

COLORS = {"healthy": "#1a7f37", "info": "#0969da", "warning": "#9a6700", "error": "#cf222e", "critical": "#8b0000"}
DEAD_COLOR, SATURATED_COLOR, OK_COLOR, FLAGGED_COLOR, SIGNAL_COLOR = (
    "#8250df",
    "#bc4c00",
    "#0969da",
    "#cf222e",
    "#1f2328",
)
CSS = """
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


def layer_label(name: str) -> str:
    """A layer name short enough for a chart label (the tail kept: it names the layer), escaped."""
    return escape(name if len(name) <= 40 else "…" + name[-39:])


def flagged_layers(report: Report) -> set[str]:
    """Layers named by a finding above info: drawn in the flagged colour."""
    return {name for f in report.findings if f.severity != "info" for name in f.layers}


def svg_open(width: int, height: int, css_class: str, label: str) -> str:
    """The opening <svg> tag of a chart, with its accessible label."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gh-chart {css_class}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">'
    )


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


def finding_html(report: Report) -> list[str]:
    """One card per finding, worst first: verdict, message, steps, layers, remediation, evidence."""
    out = []
    order = {"critical": 0, "error": 1, "warning": 2, "info": 3}
    for f in sorted(report.findings, key=lambda f: order.get(f.severity, 4)):
        color = COLORS.get(f.severity, "#57606a")
        out.append(f'<div class="finding" style="border-color:{color}">')
        out.append(
            f"<h3><span class='badge' style='background:{color}'>{escape(f.severity)}</span> "
            f"{escape(f.title)} <code>{escape(f.rule)}</code></h3>"
        )
        out.append(f"<p>{escape(f.message)}</p>")
        steps = step_range(f)
        if steps:
            out.append(f"<p class='steps'>{escape(steps[0].upper() + steps[1:])}</p>")
        if f.caused_by:
            causes = ", ".join(f"<code>{escape(rule)}</code>" for rule in f.caused_by)
            out.append(f"<p class='caused-by'>Caused by: {causes} (fix that first).</p>")
        if f.layers:
            more = f" and {len(f.layers) - 12} more" if len(f.layers) > 12 else ""
            out.append("<p>Layers: " + ", ".join(f"<code>{escape(n)}</code>" for n in f.layers[:12]) + more + "</p>")
        for fix in f.remediation:
            out.append(f"<p><b>{escape(fix.action)}</b>: {escape(fix.detail)}</p>")
            if fix.snippet:
                out.append(f"<pre>{escape(fix.snippet)}</pre>")
            if fix.references:
                out.append("<p><small>" + "; ".join(_reference(r) for r in fix.references) + "</small></p>")
            out.append(verification_html(fix))
        out.append(_evidence(f))
        out.append("</div>")
    return out


def severity_chips(report: Report) -> str:
    """Finding counts per severity, coloured: the line under the verdict."""
    counts = {s: sum(f.severity == s for f in report.findings) for s in ("critical", "error", "warning", "info")}
    plural = {"error": "errors", "warning": "warnings"}
    return "".join(
        f"<span style='color:{COLORS[s]}'>{n} {plural.get(s, s) if n > 1 else s}</span>" for s, n in counts.items() if n
    )
