"""The columnar batch a run streams, and the per-chunk arrays every run rule reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .metrics import METRICS


@dataclass(frozen=True)
class LogChunk:
    """Steps × layers statistics of one log batch. NaN = not measured; +inf = measured but non-finite."""

    steps: np.ndarray  # int64 (n,), strictly increasing optimizer steps
    loss: np.ndarray  # float64 (n,); NaN/inf where the loss really was non-finite
    loss_logged: np.ndarray  # bool (n,): False where no loss was logged
    lr: np.ndarray  # float64 (n,), NaN = not logged
    metrics: dict[str, np.ndarray]  # name -> float64 (n, L)
    stride: np.ndarray | None = None  # int64 (n,): optimizer steps each row stands for (the client's stride); None: 1
    activations: np.ndarray | None = None  # float64 (n, 2, A): dead, saturated fractions per activation; NaN unread

    @classmethod
    def of(
        cls,
        steps: Sequence[int] | np.ndarray,
        loss: Sequence[float | None] | np.ndarray | None = None,
        lr: Sequence[float | None] | np.ndarray | None = None,
        metrics: Mapping[str, Sequence[Sequence[float | None]] | np.ndarray] | None = None,
        stride: int | Sequence[int] | np.ndarray | None = None,
    ) -> LogChunk:
        """Build a chunk from wire-format columns: None (JSON null) means not logged (numpy turns it into NaN).

        A loss given as a numpy array counts as logged at every step (its NaN/inf are real non-finite losses).
        """
        n = len(steps)
        if loss is None:
            loss_arr, logged = np.full(n, np.nan), np.zeros(n, dtype=bool)
        elif isinstance(loss, np.ndarray):
            loss_arr, logged = loss.astype(np.float64), np.ones(n, dtype=bool)
        else:
            loss_arr = np.array(loss, dtype=np.float64)
            logged = np.array([v is not None for v in loss], dtype=bool)
        lr_arr = np.full(n, np.nan) if lr is None else np.array(lr, dtype=np.float64)
        mats = {name: np.array(rows, dtype=np.float64) for name, rows in (metrics or {}).items()}
        strides = None if stride is None else np.broadcast_to(np.asarray(stride, dtype=np.int64), (n,)).copy()
        return cls(np.asarray(steps, dtype=np.int64), loss_arr, logged, lr_arr, mats, strides)


@dataclass(frozen=True)
class ChunkView:
    """New rows only (steps after the last one evaluated), as contiguous float64 arrays."""

    steps: np.ndarray  # (n,) int64
    loss: np.ndarray  # (n,)
    loss_logged: np.ndarray  # (n,) bool
    lr: np.ndarray  # (n,)
    lr_filled: np.ndarray  # (n,) the last lr logged at or before each row (NaN before any)
    lr_prev: np.ndarray  # (n,) the lr of the step before: the one that produced this row's loss
    grad: np.ndarray  # (n, L) grad_norm
    grad_max: np.ndarray  # (n, L) grad_max_abs
    nonfinite: np.ndarray  # (n, L) count of param tensors with NaN/Inf gradients
    weight: np.ndarray  # (n, L) weight_norm
    update: np.ndarray  # (n, L) update_norm
    upd_rows: np.ndarray  # (m,) rows where update/weight was sampled
    upd_ratio: np.ndarray  # (m, L) update_norm / weight_norm on those rows, NaN where not sampled
    global_norm: np.ndarray  # (n,) sqrt(sum of layer grad_norm^2); NaN unmeasured, inf non-finite
    # finite logged losses of this chunk, with a 9-point rolling median/MAD over them and the ones before
    fin_rows: np.ndarray  # (k,) row indices into the chunk
    fin_steps: np.ndarray  # (k,) int64
    fin_loss: np.ndarray  # (k,)
    loss_med: np.ndarray  # (k,) median of the last 9 finite losses (NaN until 9 seen)
    loss_mad: np.ndarray  # (k,)
    loss_med_long: np.ndarray  # (k,) median of the last 51 finite losses (from 9 on): the level
    loss_mad_long: np.ndarray  # (k,) and their MAD: the minibatch noise
    # (n,) int64 >= 1: optimizer steps each row stands for (the client's stride, 1 when not sent). A patience
    # counted in logged steps sums these, so a throttled run reaches it after as many steps as a full one.
    stride: np.ndarray
    # (n, 2, A) dead and saturated fractions of the run's activations (NaN: not read), and their kinds
    activations: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 0)))
    activation_kinds: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        """Rows in the chunk."""
        return len(self.steps)


def new_rows(chunk: LogChunk, last_step: int | None, num_layers: int) -> dict[str, np.ndarray]:
    """Validate a chunk and keep only rows after last_step (late or repeated rows are dropped)."""
    steps = np.asarray(chunk.steps, dtype=np.int64).reshape(-1)
    n = len(steps)
    floor = np.iinfo(np.int64).min if last_step is None else last_step
    running = np.maximum.accumulate(np.concatenate([[floor], steps]))[:-1]
    after = steps > running  # strictly after everything before it
    keep: np.ndarray | slice = slice(None) if after.all() else after  # no copies in the usual case
    cols: dict[str, np.ndarray] = {"steps": steps[keep]}
    for name in ("loss", "lr"):
        arr = np.asarray(getattr(chunk, name), dtype=np.float64).reshape(-1)
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} values for {n} steps")
        cols[name] = np.ascontiguousarray(arr[keep])
    logged = np.asarray(chunk.loss_logged, dtype=bool).reshape(-1)
    if len(logged) != n:
        raise ValueError(f"loss_logged has {len(logged)} values for {n} steps")
    cols["loss_logged"] = logged[keep]
    if chunk.stride is None:
        cols["stride"] = np.ones(len(cols["steps"]), dtype=np.int64)
    else:
        stride = np.asarray(chunk.stride, dtype=np.int64).reshape(-1)
        if len(stride) != n or (stride < 1).any():
            raise ValueError(f"stride needs {n} values >= 1, got {len(stride)}")
        cols["stride"] = stride[keep]
    acts = np.zeros((n, 2, 0)) if chunk.activations is None else np.asarray(chunk.activations, dtype=np.float64)
    if acts.ndim != 3 or acts.shape[:2] != (n, 2):
        raise ValueError(f"activations has shape {acts.shape}, expected ({n}, 2, A)")
    cols["activations"] = acts[keep]
    for name in METRICS:
        given = chunk.metrics.get(name)
        if given is None:
            cols[name] = np.full((len(cols["steps"]), num_layers), np.nan)
            continue
        arr = np.asarray(given, dtype=np.float64)
        shape: tuple[int, ...] = arr.shape
        if shape != (n, num_layers):
            raise ValueError(f"metric {name} has shape {arr.shape}, expected ({n}, {num_layers})")
        cols[name] = np.ascontiguousarray(arr[keep])
    return cols


def forward_fill(values: np.ndarray, carry: float) -> np.ndarray:
    """Each row's last finite value at or before it, starting from `carry`."""
    seq = np.concatenate([[carry], values])
    idx = np.where(np.isfinite(seq), np.arange(len(seq)), 0)
    filled: np.ndarray = seq[np.maximum.accumulate(idx)][1:]
    return filled


def global_norm(grad: np.ndarray, nonfinite: np.ndarray) -> np.ndarray:
    """sqrt(sum over measured layers of grad_norm^2): NaN when no layer was measured, inf when any is non-finite."""
    missing = np.isnan(grad)
    out: np.ndarray
    if missing.any():
        out = np.sqrt((np.where(missing, 0.0, grad) ** 2).sum(axis=1))
        out[missing.all(axis=1)] = np.nan
    else:  # same sums, one pass fewer
        out = np.sqrt((grad * grad).sum(axis=1))
    bad = np.isinf(out) | (nonfinite > 0).any(axis=1)  # an infinite layer norm makes the sum infinite
    out[bad] = np.inf
    return out


def update_ratios(update: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows where any layer's update and weight norms were sampled, and update/weight on them (NaN elsewhere)."""
    sampled = np.isfinite(update) & np.isfinite(weight) & (weight > 0)
    rows = np.flatnonzero(sampled.any(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(sampled[rows], update[rows] / weight[rows], np.nan)
    return rows, ratio


def row_median(values: np.ndarray) -> np.ndarray:
    """Median of each row's non-NaN values (NaN for an empty row), without nanmedian's per-row Python loop."""
    if not values.size:
        return np.full(len(values), np.nan)
    ordered = np.sort(values, axis=1)  # NaN sorts last
    k = (~np.isnan(values)).sum(axis=1)
    idx = np.arange(len(values))
    lo = ordered[idx, np.maximum(k - 1, 0) // 2]
    hi = ordered[idx, np.minimum(k // 2, values.shape[1] - 1)]
    out: np.ndarray = (lo + hi) / 2  # the two middle values (the same one twice for an odd count), as np.median
    out[k == 0] = np.nan
    return out
