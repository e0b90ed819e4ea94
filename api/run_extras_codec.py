"""The optional sparse parts of a log batch: `distributions` (per-layer sketches) and `activations` (docs/runs.md).

Both are {"steps": [...], <kind>: values, <kind>: values}: the steps (a strictly increasing subset of
the batch's steps) that carry them, and per kind one msgpack float32 bin (row-major) or nested lists
of numbers/nulls. A sketch is WIDTH numbers: 9 quantiles of the layer's finite values (NaN when it
has none), then its counts of zeros, of non-finite values and of all values. An activation value is
a fraction from 0 to 1 (NaN: not measured). Every problem is a 422 that says what to fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ApiError

WIDTH = 12  # 9 quantiles, zeros, non-finite, count
QUANTILES = 9
SKETCH_KINDS = ("grad", "weight")
ACTIVATION_KINDS = ("dead", "saturated")
MAX_ACTIVATIONS = 10_000


def _invalid(message: str) -> ApiError:
    return ApiError(422, message, code="validation_error")


def _steps(name: str, value: Any, batch_steps: np.ndarray) -> np.ndarray:
    if not isinstance(value, list) or not value or any(type(v) is not int for v in value):
        raise _invalid(f"{name}.steps must be a non-empty list of the batch's step numbers")
    steps = np.asarray(value, dtype=np.int64) if all(0 <= v < 2**63 for v in value) else None
    if steps is None or (len(steps) > 1 and np.any(np.diff(steps) <= 0)) or not np.isin(steps, batch_steps).all():
        raise _invalid(f"{name}.steps must be strictly increasing and each one of the batch's steps")
    return steps


def _array(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """One kind as float32 of `shape`, from a float32 bin or nested lists of numbers/nulls."""
    size = int(np.prod(shape))
    if isinstance(value, bytes | bytearray):
        if len(value) != size * 4:
            raise _invalid(f"{name}: {len(value)} bytes, expected {size * 4} ({' x '.join(map(str, shape))} float32)")
        return np.frombuffer(value, dtype="<f4").reshape(shape)
    try:
        array = np.array(_nulls(value), dtype=np.float32)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise _invalid(f"{name} must hold numbers or nulls: {exc}") from exc
    if array.shape != shape:
        raise _invalid(f"{name}: shape {array.shape}, expected {shape}")
    return array


def _nulls(value: Any, depth: int = 0) -> Any:
    if depth > 3 or not isinstance(value, list):
        return np.nan if value is None else value
    return [_nulls(v, depth + 1) for v in value]


def _section(body: dict[str, Any], name: str, kinds: tuple[str, ...]) -> dict[str, Any] | None:
    section = body.get(name)
    if section is None:
        return None
    if not isinstance(section, dict) or set(section) - {"steps", *kinds}:
        raise _invalid(f"{name} must be an object with steps and any of {list(kinds)}")
    return section


def distributions(body: dict[str, Any], steps: np.ndarray, num_layers: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(sketch steps (k,), sketches float32 (k, 2, L, WIDTH)) or None when the batch has none."""
    section = _section(body, "distributions", SKETCH_KINDS)
    if section is None:
        return None
    rows = _steps("distributions", section.get("steps"), steps)
    out = np.full((len(rows), len(SKETCH_KINDS), num_layers, WIDTH), np.nan, dtype=np.float32)
    for index, kind in enumerate(SKETCH_KINDS):
        if kind in section:
            out[:, index] = _array(f"distributions.{kind}", section[kind], (len(rows), num_layers, WIDTH))
    quantiles, counts = out[..., :QUANTILES], out[..., QUANTILES:]
    if np.isinf(quantiles).any():
        raise _invalid("distributions: quantiles are of the finite values: a number, or null/NaN when none is finite")
    measured = ~np.isnan(counts)
    if (counts[measured] < 0).any() or np.isinf(counts).any() or (measured.any(axis=-1) != measured.all(axis=-1)).any():
        raise _invalid("distributions: zeros, non-finite and count are counts >= 0, all three or none")
    return rows, out


def activations(body: dict[str, Any], steps: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps (j,), fractions float32 (j, 2, A)) or None; A is the run's config.activations length."""
    section = _section(body, "activations", ACTIVATION_KINDS)
    if section is None:
        return None
    if not count:
        raise _invalid("activations: this run declared no activations (config.activations of POST /v1/runs)")
    rows = _steps("activations", section.get("steps"), steps)
    out = np.full((len(rows), len(ACTIVATION_KINDS), count), np.nan, dtype=np.float32)
    for index, kind in enumerate(ACTIVATION_KINDS):
        if kind in section:
            out[:, index] = _array(f"activations.{kind}", section[kind], (len(rows), count))
    measured = out[~np.isnan(out)]
    if ((measured < 0) | (measured > 1)).any():
        raise _invalid("activations: dead and saturated are fractions from 0 to 1 (null/NaN: not measured)")
    return rows, out


def check_declared(config: dict[str, Any]) -> None:
    """POST /v1/runs: config.activations, when given, is a list of unique {name, kind} strings."""
    value = config.get("activations")
    if value is None:
        return
    if not isinstance(value, list) or len(value) > MAX_ACTIVATIONS:
        raise ValueError(f"config.activations must be a list of at most {MAX_ACTIVATIONS} {{name, kind}} objects")
    for item in value:
        if (
            not isinstance(item, dict)
            or set(item) != {"name", "kind"}
            or not all(isinstance(v, str) and 0 < len(v) <= 500 for v in item.values())
        ):
            raise ValueError('config.activations items are {"name": str, "kind": str}, non-empty, at most 500 chars')
    names = [item["name"] for item in value]
    if len(set(names)) != len(names):
        raise ValueError("config.activations names must be unique")
