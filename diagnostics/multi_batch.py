"""Analyse a model on several batches and merge: variance across batches is measured, not guessed from one.

Merge rule (documented in docs/api.md and README):

- The base is the report of the first batch: its layers, metrics, estimates and spectrum stay as they are.
- Every finite scalar present in every per-batch report becomes an Estimate in `estimates`, keyed
  `across_batches.<name>`: the mean over batches, a Student-t interval at level 0.95 (none with one
  batch), samples = number of batches, method "across batches". Scalars are the top-level numeric
  metrics (`loss`, `global_grad_norm`, ...), each layer's grad_norm, grad_to_weight, update_to_weight
  and GSNR (`layer.<name>.<stat>`)
  and the value of every estimate the per-batch reports carry (noise, curvature, ...): no list of
  names, so new estimates join without changes here.
- Findings: a rule counts when it fires on a majority of batches (more than half). Its findings are
  the base batch's (else the earliest batch's that fired), each with the median over the firing
  batches of their worst severity for that rule, evidence `batches_fired: "k of n"`, and `caused_by`
  kept to rules that also count. Health follows from the kept findings.
- `metrics["batches"]` and `environment["batches"]` say how many batches were analysed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

from gradhealth.report.schema import SEVERITY_ORDER, Estimate, Finding, Report, health_of

from .errors import InputError
from .report_builder import summary

PREFIX = "across_batches."
METHOD = "across batches"
LEVEL = 0.95
MAX_BATCHES = 16
# Per-layer statistics worth an interval: gradient scale and step size (not every field: a deep model
# would otherwise carry thousands of estimates).
LAYER_STATS = ("grad_norm", "grad_to_weight", "update_to_weight")
# Two-sided 97.5% Student-t quantiles for df = 1..30: the interval is computed without scipy.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 0.975 Student-t quantile, tabulated so the interval needs no scipy; normal beyond df 30."""
    return _T975[df - 1] if df <= len(_T975) else 1.960


def t_interval(values: Sequence[float]) -> Estimate:
    """Mean and 95% t-interval of per-batch values: the spread between batches, not within one."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(value=mean, level=LEVEL, samples=n, method=METHOD)
    half = t_quantile_975(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Estimate(value=mean, low=mean - half, high=mean + half, level=LEVEL, samples=n, method=METHOD)


def _scalars(report: Report) -> dict[str, float]:
    """The finite numbers a report carries, by a name stable across batches of the same model."""
    out: dict[str, float] = {}
    for name, value in report.metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    for layer in report.layers:
        for stat in LAYER_STATS:
            value = getattr(layer, stat)
            if value is not None and math.isfinite(value):
                out[f"layer.{layer.name}.{stat}"] = float(value)
        if layer.gsnr is not None and math.isfinite(layer.gsnr.value):
            out[f"layer.{layer.name}.gsnr"] = layer.gsnr.value
    for name, estimate in report.estimates.items():
        if not name.startswith(PREFIX) and math.isfinite(estimate.value):
            out[name] = estimate.value
    return out


def across_batches(reports: Sequence[Report]) -> dict[str, Estimate]:
    """One Estimate per scalar present (finite) in every report, keyed across_batches.<name>."""
    per_batch = [_scalars(r) for r in reports]
    common = [name for name in per_batch[0] if all(name in s for s in per_batch[1:])]
    return {PREFIX + name: t_interval([s[name] for s in per_batch]) for name in common}


def _worst(findings: Sequence[Finding]) -> Finding:
    """A batch's verdict on one rule: its most severe finding."""
    return max(findings, key=lambda f: SEVERITY_ORDER[f.severity])


def _median_severity(findings: Sequence[Finding]) -> str:
    """The median severity by rank (the lower middle for an even count, so one loud batch cannot decide)."""
    ranked = sorted((f.severity for f in findings), key=SEVERITY_ORDER.__getitem__)
    return ranked[(len(ranked) - 1) // 2]


def merge_findings(reports: Sequence[Report]) -> list[Finding]:
    """Findings that fire on a majority of batches, median severity, with `batches_fired` evidence."""
    n = len(reports)
    by_rule: dict[str, list[list[Finding]]] = {}  # rule -> per firing batch, its findings of that rule
    for report in reports:
        for rule in dict.fromkeys(f.rule for f in report.findings):
            by_rule.setdefault(rule, []).append([f for f in report.findings if f.rule == rule])
    majority = {rule: fired for rule, fired in by_rule.items() if 2 * len(fired) > n}
    kept: list[Finding] = []
    for fired in majority.values():  # first-seen order: the base batch's rules first
        severity = _median_severity([_worst(batch) for batch in fired])
        for finding in fired[0]:  # the earliest firing batch's findings (the base's when it fired)
            evidence = {**finding.evidence, "batches_fired": f"{len(fired)} of {n}"}
            caused_by = [r for r in finding.caused_by if r in majority]
            kept.append(finding.model_copy(update={"severity": severity, "evidence": evidence, "caused_by": caused_by}))
    return kept


def merge_reports(reports: Sequence[Report]) -> Report:
    """The first batch's report plus across-batch estimates and majority findings (see the module doc)."""
    if not reports:
        raise ValueError("merge_reports needs at least one report")
    base, n = reports[0], len(reports)
    if n == 1:
        return base
    findings = merge_findings(reports)
    health = health_of(findings)
    text = summary(findings, base.model.num_layers)  # of the kept findings, not the base batch's
    text = f"{text} Merged over {n} batches: findings kept when they fire on a majority."
    return base.model_copy(
        update={
            "findings": findings,
            "health": health,
            "summary": text,
            "metrics": {**base.metrics, "batches": n},
            "environment": {**base.environment, "batches": str(n)},
            "estimates": {**base.estimates, **across_batches(reports)},
        }
    )


def share(progress: Callable[[str, float], None] | None, index: int, count: int) -> Callable[[str, float], None] | None:
    """Batch `index`'s progress as its slice of one bar over `count` batches."""
    if progress is None or count == 1:
        return progress
    return lambda phase, fraction: progress(phase, (index + fraction) / count)


def run_batches(run_one: Callable[[int], Report], count: int) -> Report:
    """Run the analysis on batch 0..count-1 (run_one(i) gives batch i's report) and merge them."""
    if not 1 <= count <= MAX_BATCHES:
        raise ValueError(f"between 1 and {MAX_BATCHES} batches, got {count}")
    reports = []
    for i in range(count):
        try:
            reports.append(run_one(i))
        except InputError as exc:  # e.g. a batch that does not fit the model: say which one
            if count == 1:
                raise
            raise type(exc)(f"batch {i + 1} of {count}: {exc}") from exc
    return merge_reports(reports)
