"""A run's report: findings and rule state from the run row, a downsampled timeline from its segments."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import numpy as np
from gradhealth.diagnostics.run_rules import RunEvaluator
from gradhealth.report import Finding, LayerStats, LayerTimeline, ModelInfo, Report, SkippedCheck, Timeline
from sqlalchemy.orm import Session

from .models import TrainingRun
from .run_extras_report import add_extras
from .run_segments import read_layer, read_run_records
from .runs import layer_names

MAX_POINTS = 400  # enough for a chart a few hundred pixels wide
MAX_CHARTED_LAYERS = 12


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values.tolist()]


def bucket_index(steps: np.ndarray, first: int, last: int, points: int = MAX_POINTS) -> np.ndarray:
    """Map steps to at most `points` equal-width step buckets (one per step when there are fewer)."""
    span = max(last - first + 1, 1)
    if span <= points:
        return (steps - first).astype(np.int64)
    return ((steps - first) * points // span).astype(np.int64)


def bucket_max(buckets: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Largest value per bucket, so spikes survive downsampling; inf survives, NaN only if all NaN."""
    out = np.full(size, -np.inf)
    finite_or_inf = np.where(np.isnan(values), -np.inf, values)
    np.maximum.at(out, buckets, finite_or_inf)
    out[out == -np.inf] = np.nan
    return out


def bucket_mean(buckets: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Mean of the logged values per bucket (NaN where none); a non-finite value makes the bucket inf."""
    logged = ~np.isnan(values)
    sums = np.bincount(buckets[logged], weights=values[logged], minlength=size)
    counts = np.bincount(buckets[logged], minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def charted_layers(names: list[str], findings: list[Finding]) -> list[int]:
    """Flagged layers first, then the first and last layer, then evenly spaced ones, at most 12."""
    index = {name: i for i, name in enumerate(names)}
    chosen: list[int] = []
    for finding in findings:
        chosen.extend(index[name] for name in finding.layers if name in index)
    chosen.extend([0, len(names) - 1])
    chosen.extend(np.linspace(0, len(names) - 1, num=min(len(names), MAX_CHARTED_LAYERS)).astype(int).tolist())
    return sorted(dict.fromkeys(chosen))[:MAX_CHARTED_LAYERS] if names else []


def _layer_timeline(
    values: np.ndarray, buckets: np.ndarray, size: int, used: np.ndarray, metrics: list[str]
) -> LayerTimeline:
    """One layer's metrics bucketed on the run's step axis (max for norms, so spikes stay visible)."""
    nan = np.full(values.shape[1], np.nan)
    column = {name: values[i].astype(np.float64) for i, name in enumerate(metrics)}
    weight = column.get("weight_norm", nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = column.get("update_norm", nan) / weight
    series = {
        "grad_norm": bucket_max(buckets, column.get("grad_norm", nan), size),
        "grad_max_abs": bucket_max(buckets, column.get("grad_max_abs", nan), size),
        "weight_norm": bucket_mean(buckets, np.where(np.isfinite(weight), weight, np.nan), size),
        "update_to_weight": bucket_max(buckets, ratio, size),
        "nonfinite": bucket_max(buckets, column.get("nonfinite", nan), size),
    }
    return LayerTimeline(**{name: _finite_or_none(values[used]) for name, values in series.items()})


def build_timeline(session: Session, run: TrainingRun, findings: list[Finding]) -> Timeline | None:
    """Loss, lr, global grad norm and the charted layers' histories on one shared step axis."""
    records = read_run_records(session, run.id)
    if records.size == 0:
        return None
    steps = records["step"]
    first, last = int(steps.min()), int(steps.max())
    buckets = bucket_index(steps, first, last)
    size = int(buckets.max()) + 1
    used = np.flatnonzero(np.bincount(buckets, minlength=size) > 0)
    loss = np.where(records["loss_logged"].astype(bool), records["loss"], np.nan)
    step_of_bucket = np.zeros(size, dtype=np.int64)
    np.maximum.at(step_of_bucket, buckets, steps - first)
    timeline = Timeline(
        steps=(step_of_bucket[used] + first).tolist(),
        loss=_finite_or_none(bucket_mean(buckets, loss, size)[used]),
        lr=_finite_or_none(bucket_mean(buckets, records["lr"], size)[used]),
        global_grad_norm=_finite_or_none(bucket_max(buckets, records["global_grad_norm"], size)[used]),
    )
    names, metrics = layer_names(run), json.loads(run.metrics)
    charted = charted_layers(names, findings)
    for layer in charted:
        layer_steps, values = read_layer(session, run.id, layer, len(metrics))
        layer_buckets = bucket_index(layer_steps, first, last)
        timeline.layers[names[layer]] = _layer_timeline(values, layer_buckets, size, used, metrics)
    add_extras(session, run, timeline, names, charted)
    return timeline


def _layer_stats(run: TrainingRun) -> list[LayerStats]:
    """Each layer's latest measured values."""
    latest: dict[str, list[Any]] = json.loads(run.latest)
    rows = []
    for index, layer in enumerate(json.loads(run.layers)):

        def value(metric: str, i: int = index) -> float | None:
            column = latest.get(metric)
            return column[i] if column else None

        grad, weight, update = value("grad_norm"), value("weight_norm"), value("update_norm")
        rows.append(
            LayerStats(
                name=layer["name"],
                type=layer.get("type") or "",
                num_parameters=int(layer.get("num_parameters") or 0),
                grad_norm=grad,
                weight_norm=weight,
                grad_to_weight=grad / weight if grad is not None and weight else None,
                update_to_weight=update / weight if update is not None and weight else None,
                nonfinite=int(value("nonfinite") or 0),
                extra={"grad_max_abs": value("grad_max_abs")},
            )
        )
    return rows


def _summary(run: TrainingRun, findings: list[Finding]) -> str:
    if run.num_steps == 0:
        return f"Run {run.name!r}: no steps logged yet."
    worst = sorted(findings, key=lambda f: ("info", "warning", "error", "critical").index(f.severity), reverse=True)
    headline = f"; worst: {worst[0].title} (step {worst[0].step})" if worst and run.health != "healthy" else ""
    return f"Run {run.name!r}: {run.num_steps} steps logged up to step {run.last_step}, {run.health}{headline}."


def build_report(session: Session, run: TrainingRun) -> Report:
    """The run's report so far (schema version 1, kind "run")."""
    findings = [Finding.model_validate(f) for f in json.loads(run.findings)]
    config: dict[str, Any] = json.loads(run.config)
    layers = json.loads(run.layers)
    state = json.loads(run.rule_state) or None
    evaluator = RunEvaluator(layer_names(run), state) if state else None
    summary = evaluator.summary() if evaluator is not None else {}
    failures = evaluator.failures if evaluator is not None else {}
    metrics: dict[str, Any] = {k: v for k, v in summary.items() if isinstance(v, int | float) or v is None}
    metrics.update(steps=run.num_steps, batches=run.num_batches, dropped_steps=run.dropped)
    return Report(
        id=run.id,
        kind="run",
        created_at=run.updated_at.replace(tzinfo=UTC),  # the database keeps naive UTC
        health=run.health,  # type: ignore[arg-type]
        summary=_summary(run, findings),
        model=ModelInfo(
            format="watch",
            num_parameters=sum(int(layer.get("num_parameters") or 0) for layer in layers),
            num_layers=len(layers),
            dtype=str(config.get("dtype", "float32")),
            device=str(config.get("device", "cpu")),
        ),
        findings=findings,
        layers=_layer_stats(run),
        metrics=metrics,
        environment={k: str(v) for k, v in config.items() if isinstance(v, str | int | float | bool)},
        timeline=build_timeline(session, run, findings),
        skipped=[SkippedCheck(check=f"run_rule.{rule}", reason=reason) for rule, reason in failures.items()],
    )
