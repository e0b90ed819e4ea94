"""One columnar log batch as msgpack (docs/runs.md): metrics as little-endian float32 bins, row-major."""

from __future__ import annotations

import math

import msgpack
import numpy as np

from ._records import Record
from ._stats import METRICS


def _finite_or_inf(value: float | None) -> float | None:
    """A measured non-finite number is sent as +inf (NaN would read as "not measured")."""
    return value if value is None or math.isfinite(value) else math.inf


def pack_batch(seq: int, records: list[Record], num_layers: int, dropped: int) -> bytes:
    """The body of POST /v1/runs/{id}/logs for these records (in step order)."""
    rows = [record.values.numpy() for record in records]
    width = len(METRICS) * num_layers
    table = np.stack([row[:width] for row in rows])
    metrics = {
        name: np.ascontiguousarray(table[:, k * num_layers : (k + 1) * num_layers], dtype="<f4").tobytes()
        for k, name in enumerate(METRICS)
    }
    lr = [float(row[width]) if record.lr_in_values else record.lr for row, record in zip(rows, records, strict=True)]
    strides = [record.stride for record in records]
    body = {
        "seq": seq,
        "steps": [record.step for record in records],
        "loss": [_finite_or_inf(record.loss_value()) for record in records],
        "lr": [_finite_or_inf(value) for value in lr],
        "metrics": metrics,
        "dropped": dropped,
        "stride": strides[0] if len(set(strides)) == 1 else strides,  # one number when it did not change
    }
    body.update(_extras(records))
    return msgpack.packb(body, use_bin_type=True)


def _bins(records: list[Record], arrays: list[np.ndarray], names: tuple[str, str]) -> dict[str, object]:
    """Sparse rows: the steps that have them, and each of the two kinds as one float32 bin, row-major."""
    stacked = np.stack(arrays)
    out: dict[str, object] = {"steps": [record.step for record in records]}
    for k, name in enumerate(names):
        out[name] = np.ascontiguousarray(stacked[:, k], dtype="<f4").tobytes()
    return out


def _extras(records: list[Record]) -> dict[str, object]:
    """`distributions` and `activations` (docs/runs.md), present only when some record carries them."""
    body: dict[str, object] = {}
    sketched = [record for record in records if record.sketch is not None]
    if sketched:
        body["distributions"] = _bins(sketched, [r.sketch.numpy() for r in sketched if r.sketch], ("grad", "weight"))
    read = [record for record in records if record.activations is not None]
    if read:
        arrays = [r.activations.numpy() for r in read if r.activations]
        body["activations"] = _bins(read, arrays, ("dead", "saturated"))
    return body
