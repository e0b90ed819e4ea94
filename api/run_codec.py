"""Decode and validate a POSTed log batch (JSON or msgpack, gzip or not) into a LogBatch.

Every problem is an ApiError with a message that says what to fix: 413 for size, 415 for an
unknown Content-Type or Content-Encoding, 400 for bytes that do not parse, 422 for a body that
parses but does not fit the run (docs/runs.md).

Parsing is bounded before it allocates: gzip inflates to at most the batch limit, msgpack runs with
max_*_len limits and hooks that count every container and item, and a JSON body's containers and
items are counted on the raw bytes (one C pass) before json.loads builds anything.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import msgpack
import numpy as np
from gradhealth.diagnostics.run_rules.metrics import METRICS
from gradhealth.store.run_segments import LogBatch

from . import run_extras_codec
from .errors import ApiError
from .paging import INT64_MAX
from .run_schemas import MAX_LAYERS

JSON_TYPES = {"application/json"}
MSGPACK_TYPES = {"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"}
MAX_STEPS_PER_BATCH = 100_000
MAX_VALUES_PER_BATCH = 16 * 2**20  # float32 values: what a 64 MiB batch of msgpack bins carries
FIELDS = {"seq", "steps", "loss", "lr", "metrics", "dropped", "stride", "distributions", "activations"}
MAX_STRIDE = 2**31 - 1
# Lists and maps, and the items in them, in one parsed batch: a row per step per metric, plus a few.
MAX_CONTAINERS = MAX_STEPS_PER_BATCH * len(METRICS) + 64
MAX_ITEMS = 4_000_000  # numbers in list form (send more as msgpack float32 bins); about 128 MB as floats
MSGPACK_LIMITS = {
    "max_array_len": max(MAX_STEPS_PER_BATCH, MAX_LAYERS),  # steps, or a row of layers
    "max_map_len": 64,
    "max_str_len": 1024,
}


def _too_many(what: str, limit: int) -> ApiError:
    return ApiError(
        413,
        f"the batch holds more than {limit} {what}, the most one batch may hold; send fewer steps per batch, "
        "or metrics as msgpack float32 bins (docs/runs.md)",
    )


class _Budget:
    """msgpack hooks that count containers and items as they are built, refusing past the limits."""

    def __init__(self) -> None:
        self.containers = 0
        self.items = 0

    def _count(self, items: int) -> None:
        self.containers += 1
        self.items += items
        if self.containers > MAX_CONTAINERS:
            raise _too_many("lists and maps", MAX_CONTAINERS)
        if self.items > MAX_ITEMS:
            raise _too_many("values", MAX_ITEMS)

    def list_hook(self, value: list[Any]) -> list[Any]:
        self._count(len(value))
        return value

    def object_hook(self, value: dict[str, Any]) -> dict[str, Any]:
        self._count(len(value))
        return value


def _unpack_msgpack(raw: bytes) -> Any:
    """msgpack to Python with per-object limits and a running count, never more than the batch limits."""
    budget = _Budget()
    return msgpack.unpackb(
        raw,
        raw=False,
        strict_map_key=True,
        max_bin_len=len(raw),
        max_ext_len=0,
        list_hook=budget.list_hook,
        object_hook=budget.object_hook,
        **MSGPACK_LIMITS,
    )


def _load_json(raw: bytes) -> Any:
    """JSON to Python after counting containers and items on the bytes (an upper bound: no string holds many)."""
    containers = raw.count(b"[") + raw.count(b"{")
    if containers > MAX_CONTAINERS:
        raise _too_many("lists and objects", MAX_CONTAINERS)
    items = raw.count(b",") + containers
    if items > MAX_ITEMS:
        raise _too_many("values", MAX_ITEMS)
    return json.loads(raw)


def _gunzip(raw: bytes, max_bytes: int) -> bytes:
    """Inflate with a cap, so a small gzip bomb cannot allocate more than one batch may hold."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(raw, max_bytes)
        over = bool(inflater.unconsumed_tail) or (not inflater.eof and bool(inflater.decompress(b"", 1)))
    except zlib.error as exc:
        raise ApiError(400, f"the body is not valid gzip ({exc}); send it uncompressed or fix the encoder") from exc
    if over:
        raise ApiError(
            413, f"the body inflates beyond this server's batch limit of {max_bytes} bytes; send fewer steps per batch"
        )
    if not inflater.eof:
        raise ApiError(400, "the gzip body is truncated; send the whole compressed batch")
    return data


def parse_body(raw: bytes, content_type: str | None, content_encoding: str | None, max_bytes: int) -> dict[str, Any]:
    """Bytes to a dict, honouring gzip; never evaluates anything but JSON or msgpack data."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        raw = _gunzip(raw, max_bytes)
    elif encoding != "identity":
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    media = (content_type or "").split(";")[0].strip().lower()
    try:
        if media in JSON_TYPES:
            body = _load_json(raw)
        elif media in MSGPACK_TYPES:
            body = _unpack_msgpack(raw)
        else:
            raise ApiError(
                415, f"Content-Type {media or '(none)'!r} is not supported; use application/json or application/msgpack"
            )
    except ApiError:
        raise
    except ValueError as exc:
        if "exceeds max_" not in str(exc):  # msgpack's per-object limits
            raise ApiError(400, f"the body is not valid {media.split('/')[-1]}: {exc}") from exc
        raise ApiError(
            413,
            f"the batch holds a list, map or string longer than one batch may hold ({exc}): at most "
            f"{MAX_STEPS_PER_BATCH} steps, rows of at most {MAX_LAYERS} layers",
        ) from exc
    except Exception as exc:  # json and msgpack raise several types for malformed bytes
        raise ApiError(400, f"the body is not valid {media.split('/')[-1]}: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(422, "the body must be an object with seq, steps and metrics (docs/runs.md)")
    return body


def _int(body: dict[str, Any], key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if value is None:
        raise ApiError(422, f"{key} is required (docs/runs.md)", code="validation_error")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise ApiError(422, f"{key} must be an integer from 0 to 2^63-1, got {value!r}", code="validation_error")
    return value


def _steps(value: Any) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise ApiError(422, "steps must be a non-empty list of step numbers", code="validation_error")
    if len(value) > MAX_STEPS_PER_BATCH:
        raise ApiError(413, f"{len(value)} steps in one batch; send at most {MAX_STEPS_PER_BATCH}")
    if any(type(v) is not int for v in value):  # bools and floats would pass np.asarray as numbers
        raise ApiError(422, "steps must be integers (optimizer step numbers)", code="validation_error")
    try:
        steps = np.asarray(value, dtype=np.int64)
    except OverflowError:
        raise ApiError(422, "steps must be integers from 0 to 2^63-1", code="validation_error") from None
    if steps.min() < 0 or (steps.shape[0] > 1 and np.any(np.diff(steps) <= 0)):
        raise ApiError(422, "steps must be >= 0 and strictly increasing within a batch", code="validation_error")
    return steps


def _scalars(body: dict[str, Any], key: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A per-step column of numbers or nulls: values (NaN where null) and the logged mask."""
    value = body.get(key)
    if value is None:
        return np.full(n, np.nan), np.zeros(n, dtype=bool)
    if not isinstance(value, list) or len(value) != n:
        raise ApiError(422, f"{key} must be a list of {n} numbers or nulls, one per step", code="validation_error")
    logged = np.fromiter((v is not None for v in value), dtype=bool, count=n)
    try:
        numbers = np.array([np.nan if v is None else v for v in value], dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ApiError(422, f"{key} must hold numbers or nulls: {exc}", code="validation_error") from exc
    return numbers, logged


def _stride(value: Any, n: int) -> np.ndarray | None:
    """Optimizer steps each record stands for: one integer for the batch, n of them, or absent (None)."""
    if value is None:
        return None
    values = [value] * n if type(value) is int else value
    if not isinstance(values, list) or len(values) != n or any(type(v) is not int for v in values):
        raise ApiError(
            422, f"stride must be an integer or a list of {n} integers, one per step", code="validation_error"
        )
    if any(not 1 <= v <= MAX_STRIDE for v in values):
        raise ApiError(422, f"stride must be from 1 to {MAX_STRIDE}", code="validation_error")
    return np.asarray(values, dtype=np.int64)


def _matrix(name: str, value: Any, n: int, num_layers: int) -> np.ndarray:
    """One metric as float32 (n, L) from a msgpack float32 bin or n lists of L numbers/nulls."""
    if isinstance(value, bytes | bytearray):
        if len(value) != n * num_layers * 4:
            raise ApiError(
                422,
                f"metrics.{name}: {len(value)} bytes, expected {n * num_layers * 4} "
                f"({n} steps x {num_layers} layers x 4-byte little-endian float32)",
                code="validation_error",
            )
        return np.frombuffer(value, dtype="<f4").reshape(n, num_layers)
    if not isinstance(value, list):
        raise ApiError(422, f"metrics.{name} must be {n} lists of {num_layers} numbers", code="validation_error")
    try:
        matrix = np.array(value, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        try:
            matrix = np.array([[np.nan if v is None else v for v in row] for row in value], dtype=np.float32)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ApiError(422, f"metrics.{name} must hold numbers or nulls: {exc}", code="validation_error") from exc
    if matrix.shape != (n, num_layers):
        raise ApiError(
            422,
            f"metrics.{name}: shape {matrix.shape}, expected ({n}, {num_layers}): one row per step, "
            "one value per layer of the run, in the order sent to POST /v1/runs",
            code="validation_error",
        )
    return matrix


def to_log_batch(body: dict[str, Any], metric_names: list[str], num_layers: int, num_activations: int = 0) -> LogBatch:
    """Validate a parsed body against the run's layers, metrics and declared activations."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ApiError(422, f"unknown field(s) {unknown}; a batch has {sorted(FIELDS)}", code="validation_error")
    seq = _int(body, "seq")
    steps = _steps(body.get("steps"))
    n = int(steps.shape[0])
    if n * num_layers * len(metric_names) > MAX_VALUES_PER_BATCH:
        raise ApiError(413, f"{n} steps x {num_layers} layers is too much for one batch; send fewer steps per batch")
    loss, loss_logged = _scalars(body, "loss", n)
    lr, _ = _scalars(body, "lr", n)
    metrics = body.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ApiError(422, "metrics must be an object: metric name -> steps x layers values", code="validation_error")
    extra = sorted(set(metrics) - set(metric_names))
    if extra:
        raise ApiError(
            422, f"metrics {extra} are not metrics of this run; it has {metric_names}", code="validation_error"
        )
    values = np.full((len(metric_names), n, num_layers), np.nan, dtype=np.float32)
    for index, name in enumerate(metric_names):
        if name in metrics:
            values[index] = _matrix(name, metrics[name], n, num_layers)
    stride = _stride(body.get("stride"), n)
    batch = LogBatch(seq, steps, loss, loss_logged, lr, values, _int(body, "dropped", 0), stride)
    batch.distributions = run_extras_codec.distributions(body, steps, num_layers)
    batch.activations = run_extras_codec.activations(body, steps, num_activations)
    return batch
