"""Compare two reports: new, resolved and changed findings, and per-layer metric shifts.

Findings are matched by (rule, layers); findings of the same rule left unmatched are paired as
"changed" (the rule still fires, on other layers). A report has regressed when its health got
worse, a finding at warning or above is new or got more severe, or a layer got worse beyond the
tolerance: dead/saturated/fp16-underflow fractions up by >= 0.2, non-finite values appeared, or
its gradient scale moved >= 10x further from the other layers' (the median), which a uniform
rescaling of every layer does not do. Estimates (noise, curvature) count only when their intervals no
longer overlap and they moved the way the tolerance calls worse (compare_estimates).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from pydantic import BaseModel, Field

from .compare_estimates import WORSE_DIRECTION, EstimateChange, estimate_changes
from .schema import HEALTH_ORDER, SEVERITY_ORDER, Finding, LayerStats, Report


class Tolerance(BaseModel):
    """How much a per-layer metric may move before the comparison reports it."""

    ratio: dict[str, float] = Field(
        default_factory=lambda: {"grad_rms": 10.0, "grad_to_weight": 10.0, "output_grad_rms": 10.0}
    )
    """Multiplicative metrics: reported when after/before (or before/after) reaches this factor."""
    increase: dict[str, float] = Field(
        default_factory=lambda: {"dead_fraction": 0.2, "saturated_fraction": 0.2, "fp16_underflow_fraction": 0.2}
    )
    """Fractions: reported when they change by at least this much (a rise is a regression)."""
    min_severity: str = "warning"
    """New or worsened findings below this severity do not count as a regression."""
    estimate_worse: dict[str, str] = Field(default_factory=lambda: dict(WORSE_DIRECTION))
    """Estimate name -> "up" or "down": a move that way, with disjoint intervals, is a regression."""


class FindingChange(BaseModel):
    """A rule that fires in both reports, with different severity, layers or numbers."""

    rule: str
    layers_before: list[str]
    layers_after: list[str]
    severity_before: str
    severity_after: str
    worse: bool
    """The severity rose to at least the tolerance's min_severity."""
    before: Finding
    after: Finding


class MetricChange(BaseModel):
    """One layer metric that moved beyond its tolerance."""

    layer: str
    metric: str
    before: float | None
    after: float | None
    factor: float | None = None
    """after / before, for multiplicative metrics."""
    worse: bool
    description: str


class Comparison(BaseModel):
    """What changed between a baseline report and a newer one."""

    report_id: str
    baseline_id: str
    health_before: str
    health_after: str
    new: list[Finding] = Field(default_factory=list)
    resolved: list[Finding] = Field(default_factory=list)
    changed: list[FindingChange] = Field(default_factory=list)
    layer_changes: list[MetricChange] = Field(default_factory=list)
    layers_added: list[str] = Field(default_factory=list)
    layers_removed: list[str] = Field(default_factory=list)
    estimate_changes: list[EstimateChange] = Field(default_factory=list)
    """Estimates whose intervals no longer overlap (a move within the noise is not listed)."""
    regressed: bool
    reasons: list[str] = Field(default_factory=list)
    """Why it regressed, one line each (empty when it did not)."""

    def to_markdown(self) -> str:
        """A short Markdown section for CI summaries."""
        verdict = "❌ regressed" if self.regressed else "✅ no regression"
        lines = [
            f"## Compared with baseline `{self.baseline_id}`: {verdict}",
            "",
            f"Health {self.health_before} → {self.health_after}.",
            "",
        ]
        lines += [f"- {reason}" for reason in self.reasons]
        for title, items in (("New findings", self.new), ("Resolved findings", self.resolved)):
            if items:
                lines += ["", f"### {title}", ""]
                lines += [f"- [{f.severity}] `{f.rule}` {f.title} ({_layers(f.layers)})" for f in items]
        if self.changed:
            lines += ["", "### Changed findings", ""]
            lines += [
                f"- `{c.rule}`: {c.severity_before} → {c.severity_after}, layers {_layers(c.layers_before)} → "
                f"{_layers(c.layers_after)}"
                for c in self.changed
            ]
        if self.layer_changes:
            lines += ["", "### Layer metrics", ""]
            lines += [f"- {'⚠️ ' if c.worse else ''}`{c.layer}` {c.description}" for c in self.layer_changes]
        if self.estimate_changes:
            lines += ["", "### Estimates", ""]
            lines += [f"- {'⚠️ ' if c.worse else ''}{c.description}" for c in self.estimate_changes]
        return "\n".join(lines) + "\n"


def _layers(names: list[str]) -> str:
    if not names:
        return "the model"
    more = f" (+{len(names) - 6} more)" if len(names) > 6 else ""
    return ", ".join(names[:6]) + more


def _finite_positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _log_median(layers: list[LayerStats], metric: str) -> float | None:
    logs = [math.log10(v) for layer in layers if _finite_positive(v := getattr(layer, metric))]
    return statistics.median(logs) if logs else None


def _match_findings(
    before: list[Finding], after: list[Finding], tol: Tolerance
) -> tuple[list[Finding], list[Finding], list[FindingChange]]:
    floor = SEVERITY_ORDER[tol.min_severity]
    old = list(before)
    new: list[Finding] = []
    pairs: list[tuple[Finding, Finding]] = []
    unmatched_after: list[Finding] = []
    for finding in after:
        twin = next((f for f in old if f.rule == finding.rule and f.layers == finding.layers), None)
        if twin is None:
            unmatched_after.append(finding)
        else:
            old.remove(twin)
            pairs.append((twin, finding))
    for finding in unmatched_after:
        twin = next((f for f in old if f.rule == finding.rule), None)
        if twin is None:
            new.append(finding)
        else:
            old.remove(twin)
            pairs.append((twin, finding))
    changed = []
    for a, b in pairs:
        if a.severity == b.severity and a.layers == b.layers and a.evidence == b.evidence:
            continue
        rank_a, rank_b = SEVERITY_ORDER[a.severity], SEVERITY_ORDER[b.severity]
        changed.append(
            FindingChange(
                rule=b.rule,
                layers_before=a.layers,
                layers_after=b.layers,
                severity_before=a.severity,
                severity_after=b.severity,
                worse=rank_b > rank_a and rank_b >= floor,
                before=a,
                after=b,
            )
        )
    return new, old, changed


def _ratio_changes(
    name: str, a: LayerStats, b: LayerStats, medians: dict[str, tuple[float | None, float | None]], tol: Tolerance
) -> list[MetricChange]:
    out = []
    for metric, factor_tol in tol.ratio.items():
        va, vb = getattr(a, metric, None), getattr(b, metric, None)
        if not (_finite_positive(va) and _finite_positive(vb)):
            continue
        assert va is not None and vb is not None
        factor = vb / va
        if max(factor, 1 / factor) < factor_tol:
            continue
        med_a, med_b = medians[metric]
        worse = False
        if med_a is not None and med_b is not None:
            spread_before = abs(math.log10(va) - med_a)
            spread_after = abs(math.log10(vb) - med_b)
            worse = spread_after - spread_before >= math.log10(factor_tol)
        where = " (now far from the other layers)" if worse else ""
        out.append(
            MetricChange(
                layer=name,
                metric=metric,
                before=va,
                after=vb,
                factor=factor,
                worse=worse,
                description=f"{metric} {va:.3g} → {vb:.3g} (×{factor:.3g}){where}",
            )
        )
    return out


def _fraction(layer: LayerStats, metric: str) -> float | None:
    if metric == "fp16_underflow_fraction":
        return layer.fp16_underflow_fraction
    return getattr(layer.activation, metric, None) if layer.activation else None


def _layer_changes(before: Report, after: Report, tol: Tolerance) -> list[MetricChange]:
    medians = {m: (_log_median(before.layers, m), _log_median(after.layers, m)) for m in tol.ratio}
    old = {layer.name: layer for layer in before.layers}
    out: list[MetricChange] = []
    for b in after.layers:
        a = old.get(b.name)
        if a is None:
            continue
        out += _ratio_changes(b.name, a, b, medians, tol)
        for metric, step in tol.increase.items():
            fa, fb = _fraction(a, metric), _fraction(b, metric)
            if fa is None or fb is None or abs(fb - fa) < step:
                continue
            out.append(
                MetricChange(
                    layer=b.name,
                    metric=metric,
                    before=fa,
                    after=fb,
                    worse=fb > fa,
                    description=f"{metric} {fa:.2f} → {fb:.2f}",
                )
            )
        if b.nonfinite and not a.nonfinite:
            out.append(
                MetricChange(
                    layer=b.name,
                    metric="nonfinite",
                    before=float(a.nonfinite),
                    after=float(b.nonfinite),
                    worse=True,
                    description=f"{b.nonfinite} non-finite gradient values (none before)",
                )
            )
    return out


def _layer_reasons(worse: list[MetricChange]) -> list[str]:
    """One line per metric, naming the layers, so a broken block does not flood the CI log."""
    by_metric: dict[str, list[MetricChange]] = {}
    for change in worse:
        by_metric.setdefault(change.metric, []).append(change)
    lines = []
    for metric, changes in by_metric.items():
        if len(changes) == 1:
            lines.append(f"layer `{changes[0].layer}`: {changes[0].description}")
        else:
            lines.append(f"{metric} got worse in {len(changes)} layers: {_layers([c.layer for c in changes])}")
    return lines


def compare_reports(after: Report, before: Report, tolerance: Tolerance | None = None) -> Comparison:
    """What changed from `before` (the baseline) to `after`."""
    tol = tolerance or Tolerance()
    new, resolved, changed = _match_findings(before.findings, after.findings, tol)
    layer_changes = _layer_changes(before, after, tol)
    floor = SEVERITY_ORDER[tol.min_severity]
    reasons: list[str] = []
    if HEALTH_ORDER[after.health] > HEALTH_ORDER[before.health]:
        reasons.append(f"health got worse: {before.health} → {after.health}")
    describe: Callable[[Finding], str] = lambda f: f"{f.severity} `{f.rule}` on {_layers(f.layers)}"  # noqa: E731
    reasons += [f"new finding: {describe(f)}" for f in new if SEVERITY_ORDER[f.severity] >= floor]
    reasons += [f"`{c.rule}` got worse: {c.severity_before} → {c.severity_after}" for c in changed if c.worse]
    reasons += _layer_reasons([c for c in layer_changes if c.worse])
    moved = estimate_changes(before, after, tol.estimate_worse)
    reasons += [f"estimate got worse beyond its interval: {c.description}" for c in moved if c.worse]
    names_before = {layer.name for layer in before.layers}
    names_after = {layer.name for layer in after.layers}
    return Comparison(
        report_id=after.id,
        baseline_id=before.id,
        health_before=before.health,
        health_after=after.health,
        new=new,
        resolved=resolved,
        changed=changed,
        layer_changes=layer_changes,
        layers_added=sorted(names_after - names_before),
        layers_removed=sorted(names_before - names_after),
        estimate_changes=moved,
        regressed=bool(reasons),
        reasons=reasons,
    )
