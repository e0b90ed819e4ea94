"""The sparse extras of a batch as segment rows: distributions (series -2) and activation fractions (series -3).

One row per batch and kind, next to the batch's layer rows (same run, seq and transaction): int64
steps (k), then the float32 values, row-major: (k, 2, L, 12) sketches, (k, 2, A) activations. The
layer and run-level rows are untouched, so a run without extras is stored exactly as before.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import RunSegment

if TYPE_CHECKING:
    from .run_segments import LogBatch

DISTRIBUTIONS_SERIES = -2
ACTIVATIONS_SERIES = -3


def extra_rows(run_id: str, batch: LogBatch) -> list[dict[str, object]]:
    """The batch's extra rows (none when it has no extras)."""
    rows: list[dict[str, object]] = []
    for series, extra in ((DISTRIBUTIONS_SERIES, batch.distributions), (ACTIVATIONS_SERIES, batch.activations)):
        if extra is None:
            continue
        steps, values = extra
        data = np.ascontiguousarray(steps, dtype="<i8").tobytes() + np.ascontiguousarray(values, dtype="<f4").tobytes()
        first = int(steps[0])
        rows.append(
            {
                "run_id": run_id,
                "seq": batch.seq,
                "series": series,
                "first_step": first,
                "num_steps": len(steps),
                "data": data,
            }
        )
    return rows


def read_extra(session: Session, run_id: str, series: int, row_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """All steps (int64, k) and values (float32, (k, *row_shape)) of one extra series, ordered by step."""
    steps, blocks = [], []
    for count, blob in session.execute(
        select(RunSegment.num_steps, RunSegment.data)
        .where(RunSegment.run_id == run_id, RunSegment.series == series)
        .order_by(RunSegment.first_step)
    ):
        steps.append(np.frombuffer(blob, dtype="<i8", count=count))
        blocks.append(np.frombuffer(blob, dtype="<f4", offset=8 * count).reshape(count, *row_shape))
    if not blocks:
        return np.zeros(0, dtype=np.int64), np.zeros((0, *row_shape), dtype=np.float32)
    steps_all = np.concatenate(steps)
    order = np.argsort(steps_all, kind="stable")  # a late batch's rows sort into place
    return steps_all[order], np.concatenate(blocks)[order]


def run_activations(config_json: str) -> list[dict[str, str]]:
    """The run's declared activations, config.activations of POST /v1/runs ([] when none)."""
    value = json.loads(config_json).get("activations") if config_json else None
    return value if isinstance(value, list) else []


def activation_rows(batch: LogBatch, num_activations: int) -> np.ndarray | None:
    """The batch's activation fractions spread over its steps, (n, 2, A) float64 with NaN where not read."""
    if batch.activations is None or not num_activations:
        return None
    steps, values = batch.activations
    out = np.full((batch.num_steps, 2, num_activations), np.nan)
    out[np.searchsorted(batch.steps, steps)] = values
    return out
