"""Several runs of one project on one step axis (GET /v1/runs/compare), read from their segments.

The axis spans the earliest to the latest step any run logged; it has a point per step while that span is
at most `points` steps, else `points` equal-width buckets (store.run_report.bucket_index), and keeps only
the points where at least one run has a record. Every run is bucketed on that same axis, so a value at
index i of one run and of another cover the same steps; a run with no record there is null.
"""

from __future__ import annotations

import json
import math

import numpy as np
from gradhealth.report import Finding
from gradhealth.report.run_compare import ComparedRun, RunComparison, rule_timings
from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import TrainingRun
from .run_report import MAX_POINTS, bucket_index, bucket_max, bucket_mean, charted_layers
from .run_segments import read_layer, read_run_records
from .runs import layer_names


def owned_runs(session: Session, project_id: str, run_ids: list[str]) -> tuple[list[TrainingRun], list[str]]:
    """The runs of this project in the order asked, and the ids that are not (missing or another project's)."""
    found = {
        row.id: row
        for row in session.scalars(
            select(TrainingRun).where(TrainingRun.id.in_(run_ids), TrainingRun.project_id == project_id)
        )
    }
    return [found[i] for i in run_ids if i in found], [i for i in run_ids if i not in found]


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def _compared(run: TrainingRun) -> ComparedRun:
    return ComparedRun(
        id=run.id,
        name=run.name,
        health=run.health,
        num_layers=len(json.loads(run.layers)),
        run_steps=run.num_steps,
        first_step=run.first_step,
        last_step=run.last_step,
        dropped_steps=run.dropped,
        findings=[Finding.model_validate(f) for f in json.loads(run.findings)],
    )


class _Axis:
    """The shared step axis: which bucket a step falls in, and the points kept."""

    def __init__(self, step_arrays: list[np.ndarray], points: int) -> None:
        logged = [s for s in step_arrays if s.size]
        self.first = int(min(s.min() for s in logged)) if logged else 0
        last = int(max(s.max() for s in logged)) if logged else -1
        span = last - self.first + 1
        self.size = max(min(span, points), 0)
        self.last, self.span, self.points = last, span, points
        hit = np.zeros(self.size, dtype=bool)
        for steps in logged:
            hit[self.buckets(steps)] = True
        self.used = np.flatnonzero(hit)

    def buckets(self, steps: np.ndarray) -> np.ndarray:
        return bucket_index(steps, self.first, self.last, self.points)

    def steps(self) -> list[int]:
        """Each kept bucket's first step: ceil(b * span / points) past the first step."""
        if self.span <= self.points:
            return (self.used + self.first).tolist()
        return [self.first + -(-int(b) * self.span // self.points) for b in self.used]

    def bucket_steps(self) -> int:
        return 1 if self.span <= self.points else -(-self.span // self.points)

    def take(self, values: np.ndarray) -> list[float | None]:
        return _finite_or_none(values[self.used])


def _union_names(runs: list[TrainingRun]) -> list[str]:
    """Every layer name, the first run's order first, then layers only later runs have."""
    return list(dict.fromkeys(name for run in runs for name in layer_names(run)))


def _layer_values(session: Session, run: TrainingRun, layer: str, axis: _Axis) -> list[float | None]:
    """One run's gradient norm of one layer on the axis; all null when the run lacks the layer or the metric."""
    names, metrics = layer_names(run), json.loads(run.metrics)
    if layer not in names or "grad_norm" not in metrics:
        return [None] * len(axis.used)
    steps, values = read_layer(session, run.id, names.index(layer), len(metrics))
    column = values[metrics.index("grad_norm")].astype(np.float64)
    return axis.take(bucket_max(axis.buckets(steps), column, axis.size))


def compare_runs(session: Session, runs: list[TrainingRun], points: int = MAX_POINTS) -> RunComparison:
    """The runs aligned by step: loss, lr, global and charted layers' gradient norms, findings, rule timings."""
    compared = [_compared(run) for run in runs]
    records = [read_run_records(session, run.id) for run in runs]
    axis = _Axis([r["step"] for r in records], points)
    result = RunComparison(
        runs=compared,
        steps=axis.steps(),
        max_points=points,
        bucket_steps=axis.bucket_steps(),
        rules=rule_timings(compared),
    )
    for run, record in zip(runs, records, strict=True):
        buckets = axis.buckets(record["step"])
        loss = np.where(record["loss_logged"].astype(bool), record["loss"], np.nan)
        result.loss[run.id] = axis.take(bucket_mean(buckets, loss, axis.size))
        result.lr[run.id] = axis.take(bucket_mean(buckets, record["lr"], axis.size))
        result.global_grad_norm[run.id] = axis.take(bucket_max(buckets, record["global_grad_norm"], axis.size))
    if axis.size == 0:
        return result
    names = _union_names(runs)
    for index in charted_layers(names, [f for run in compared for f in run.findings]):
        layer = names[index]
        result.layers[layer] = {run.id: _layer_values(session, run, layer, axis) for run in runs}
    return result
