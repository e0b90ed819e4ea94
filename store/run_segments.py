"""How a run's per-step, per-layer values are stored: one packed row per (run, series, batch).

Layout. Every accepted log batch of n steps becomes L + 1 rows of `run_segments`:
- series -1, the run-level record array: step (int64), loss (float64), loss_logged (uint8),
  lr (float64), global_grad_norm (float64) for each of the n steps;
- series l (0 <= l < L), layer l's metrics as a float32 (M, n) block in the run's metric order.

Why this layout:
- Reading one layer's history (the common read: a chart, a history endpoint) is an index range
  scan over (run_id, series, first_step): about steps/n rows, each one contiguous block, and
  nothing of the other L - 1 layers is touched. 10^8 layer-step values in a run of 200 layers,
  5 metrics, batches of 256 steps is 10^5 steps: 400 rows of 5 KiB per layer.
- Writing stays one transaction per batch, together with the (run, seq) row that makes a retried
  batch a no-op, so a batch is either fully stored and evaluated or not at all; no file appends
  that a crash could leave half-written, and it works the same on SQLite and PostgreSQL and
  from any number of API processes.
- float32 halves the bytes of float64 and keeps 7 significant digits, more than any rule needs;
  10^8 values are 400 MB before the database's own compression (PostgreSQL TOAST).
A row per (run, layer, step) would cost ~40 bytes of row overhead per 4-byte value and 10^8 rows;
one row per batch with every layer would make a one-layer read scan the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import RunSegment
from .run_extra_segments import extra_rows

RUN_SERIES = -1
RUN_RECORD = np.dtype(
    [("step", "<i8"), ("loss", "<f8"), ("loss_logged", "u1"), ("lr", "<f8"), ("global_grad_norm", "<f8")]
)


@dataclass
class LogBatch:
    """One decoded, validated log batch: n steps of L layers and M metrics."""

    seq: int
    steps: np.ndarray  # int64 (n,), strictly increasing
    loss: np.ndarray  # float64 (n,)
    loss_logged: np.ndarray  # bool (n,)
    lr: np.ndarray  # float64 (n,), NaN = not logged
    values: np.ndarray  # float32 (M, n, L); NaN = not measured, inf = measured non-finite
    dropped: int = 0
    stride: np.ndarray | None = None  # int64 (n,): optimizer steps each record stands for; None: not sent (1)
    # sparse extras (api/run_extras_codec.py): (steps (k,), float32 (k, 2, L, 12)) and (steps (j,), float32 (j, 2, A))
    distributions: tuple[np.ndarray, np.ndarray] | None = None
    activations: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def num_steps(self) -> int:
        return int(self.steps.shape[0])


def global_grad_norm(grad_norm: np.ndarray) -> np.ndarray:
    """sqrt(sum over layers of grad_norm^2) per step; NaN where no layer was measured."""
    squares = np.square(grad_norm.astype(np.float64))
    total = np.sqrt(np.nansum(squares, axis=1))
    total[np.isnan(grad_norm).all(axis=1)] = np.nan
    return total


def run_record(batch: LogBatch, grad_norm_index: int | None) -> np.ndarray:
    """The run-level record array of one batch."""
    record = np.zeros(batch.num_steps, dtype=RUN_RECORD)
    record["step"] = batch.steps
    record["loss"] = batch.loss
    record["loss_logged"] = batch.loss_logged
    record["lr"] = batch.lr
    record["global_grad_norm"] = np.nan if grad_norm_index is None else global_grad_norm(batch.values[grad_norm_index])
    return record


def segment_rows(run_id: str, batch: LogBatch, grad_norm_index: int | None) -> list[dict[str, object]]:
    """The L + 1 rows one batch becomes, ready for one executemany insert."""
    first = int(batch.steps[0])
    common = {"run_id": run_id, "seq": batch.seq, "first_step": first, "num_steps": batch.num_steps}
    rows: list[dict[str, object]] = [
        {**common, "series": RUN_SERIES, "data": run_record(batch, grad_norm_index).tobytes()}
    ]
    per_layer = np.ascontiguousarray(batch.values.transpose(2, 0, 1))  # (L, M, n)
    rows.extend({**common, "series": layer, "data": per_layer[layer].tobytes()} for layer in range(per_layer.shape[0]))
    rows.extend(extra_rows(run_id, batch))
    return rows


def read_run_records(session: Session, run_id: str) -> np.ndarray:
    """Every step's run-level record, ordered by step."""
    blobs = session.scalars(
        select(RunSegment.data)
        .where(RunSegment.run_id == run_id, RunSegment.series == RUN_SERIES)
        .order_by(RunSegment.first_step)
    ).all()
    if not blobs:
        return np.zeros(0, dtype=RUN_RECORD)
    return np.concatenate([np.frombuffer(blob, dtype=RUN_RECORD) for blob in blobs])


def read_layer(session: Session, run_id: str, layer: int, num_metrics: int) -> tuple[np.ndarray, np.ndarray]:
    """One layer's full history: steps (int64, k) and values float32 (M, k), ordered by step."""
    steps_by_seq = {
        seq: np.frombuffer(blob, dtype=RUN_RECORD)["step"]
        for seq, blob in session.execute(
            select(RunSegment.seq, RunSegment.data).where(RunSegment.run_id == run_id, RunSegment.series == RUN_SERIES)
        )
    }
    steps, blocks = [], []
    for seq, blob in session.execute(
        select(RunSegment.seq, RunSegment.data)
        .where(RunSegment.run_id == run_id, RunSegment.series == layer)
        .order_by(RunSegment.first_step)
    ):
        steps.append(steps_by_seq[seq])
        blocks.append(np.frombuffer(blob, dtype=np.float32).reshape(num_metrics, -1))
    if not blocks:
        return np.zeros(0, dtype=np.int64), np.zeros((num_metrics, 0), dtype=np.float32)
    return np.concatenate(steps), np.concatenate(blocks, axis=1)
