"""The verify check in HTML: each trial's loss curve as uploaded and with the remedy, side by side (inline SVG)."""

from __future__ import annotations

from html import escape

from .chart_scale import Scale, scale_for
from .render import finite, verification_summary
from .render import format_number as _num
from .schema import Remediation, TrialTrajectory, Verification

PANEL, HEIGHT, LEFT, RIGHT, TOP, BOTTOM, GAP = 250, 150, 50, 8, 18, 28, 16
BASE_COLOR, REMEDY_COLOR, BAD_COLOR = "#57606a", "#1a7f37", "#cf222e"


def _points(traj: TrialTrajectory) -> list[tuple[int, float]]:
    """(step, loss) for every finite loss."""
    return [(i, v) for i, v in enumerate(traj.loss) if finite(v)]


def _panel(traj: TrialTrajectory, y: Scale, steps: int, left: float, title: str, css: str, color: str) -> list[str]:
    """One trajectory: axes, the loss line, and a red mark where it went non-finite."""
    width = PANEL - LEFT - RIGHT

    def x(step: int) -> float:
        return left + LEFT + width * step / max(steps, 1)

    parts = [f'<text x="{left + LEFT + width / 2:.1f}" y="12" text-anchor="middle">{escape(title)}</text>']
    for value, text in y.ticks():
        parts.append(
            f'<line x1="{left + LEFT:.1f}" y1="{y(value):.1f}" x2="{left + PANEL - RIGHT:.1f}" y2="{y(value):.1f}" '
            f'stroke="#eaeef2"/><text x="{left + LEFT - 4:.1f}" y="{y(value) + 3:.1f}" text-anchor="end">'
            f"{escape(text)}</text>"
        )
    parts.append(f'<text x="{left + LEFT + width / 2:.1f}" y="{HEIGHT - 4}" text-anchor="middle">step</text>')
    for step in (0, steps):
        parts.append(f'<text x="{x(step):.1f}" y="{HEIGHT - BOTTOM + 12}" text-anchor="middle">{step}</text>')
    points = _points(traj)
    if points:
        d = "M" + " L".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points)
        first, last = points[0][1], points[-1][1]
        parts.append(
            f'<path class="{css}" d="{d}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round">'
            f"<title>{escape(title)}: loss {_num(first)} to {_num(last)} in {points[-1][0]} steps</title></path>"
        )
    if traj.non_finite_steps:
        at = x(len(traj.loss) - 1 if traj.loss else 0)
        parts.append(
            f'<text class="gh-verify-nonfinite" x="{at:.1f}" y="{TOP + 10}" fill="{BAD_COLOR}" text-anchor="end">'
            f"non-finite</text>"
        )
    return parts


def verification_chart(v: Verification) -> str:
    """Baseline and remedied loss on one shared scale, side by side; "" without both trajectories."""
    if v.baseline is None or v.remediated is None:
        return ""
    values = [p for t in (v.baseline, v.remediated) for _, p in _points(t)]
    if not values:
        return ""
    y = scale_for(values, [], HEIGHT - BOTTOM, TOP)
    steps = max(len(v.baseline.loss), len(v.remediated.loss), 2) - 1
    width = 2 * PANEL + GAP
    label = f"loss over {steps} trial steps, as uploaded and with the remedy, {'log' if y.log else 'linear'} scale"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gh-chart gh-verify-chart" width="{width}" height="{HEIGHT}" '
        f'viewBox="0 0 {width} {HEIGHT}" role="img" aria-label="{escape(label)}">'
    ]
    parts += _panel(v.baseline, y, steps, 0, "as uploaded", "gh-verify-baseline", BASE_COLOR)
    parts += _panel(v.remediated, y, steps, PANEL + GAP, "with the remedy", "gh-verify-remediated", REMEDY_COLOR)
    parts.append("</svg>")
    return "".join(parts)


def verification_html(fix: Remediation) -> str:
    """The verification of one remediation: verdict line, criterion, and the side-by-side chart."""
    v = fix.verification
    if v is None:
        return ""
    color = {"verified": REMEDY_COLOR, "not_improved": "#9a6700", "failed": BAD_COLOR}.get(v.status, BASE_COLOR)
    text = escape(verification_summary(v))
    parts = [f'<div class="gh-verify" data-status="{escape(v.status)}" data-action="{escape(fix.action)}">']
    parts.append(f'<p><small><b style="color:{color}">{escape(v.status.replace("_", " "))}</b>: {text}</small></p>')
    parts.append(verification_chart(v))
    if v.criterion:
        parts.append(f"<p><small>Criterion: {escape(v.criterion)}</small></p>")
    parts.append("</div>")
    return "".join(parts)
