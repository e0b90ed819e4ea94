"""Read TensorBoard event files into gradhealth's run format: `gradhealth import-tensorboard RUN_DIR`.

Events are read with the `tensorboard` package's own reader (the `tensorboard` extra), after a bounded
pass over the record framing: every record's declared length is checked against the caps and what the
file has left, and its header checksum verified, before the reader allocates anything. Mapping (docs/runs.md):

- gradient tags: `grad/<p>`, `grads/<p>`, `gradients/<p>` (wandb.watch), `grad_norm/<p>`, `<p>.grad`, `<p>/grad`;
- weight tags: `weights/<p>`, `weight/<p>`, `parameters/<p>` (wandb.watch), `params/<p>`, `<p>.weight_norm`;
- a histogram (add_histogram) gives the tensor's L2 norm sqrt(sum_squares) and max |value|; a scalar
  (add_scalar) is read as the tensor's L2 norm; parameters `<layer>.weight`, `<layer>.bias` combine into
  their layer (norms in quadrature, the max of the maxima) at the steps where all of them were logged
  (elsewhere the layer is "not measured"); `update_norm` is not in such logs;
- loss: `loss`, `train/loss`, `loss/train`, `train_loss`, ...; learning rate: `lr`, `learning_rate`, `lr-<opt>`, ...
"""

from __future__ import annotations

import math
import re
import struct
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

METRICS = ("grad_norm", "grad_max_abs", "nonfinite", "weight_norm", "update_norm")
MAX_FILES = 1_000
MAX_FILE_BYTES = 64 * 2**20  # per event file: the pure-Python reader checksums every byte
MAX_TOTAL_BYTES = 256 * 2**20
MAX_RECORD_BYTES = 4 * 2**20  # one event; a histogram of the default 30 buckets is ~1 KB
MAX_RECORDS = 1_000_000
MAX_LAYERS = 10_000
MAX_STEPS = 1_000_000
EVENT_GLOB = "*tfevents*"

_GRAD = re.compile(r"^(?:grad|grads|gradient|gradients|grad_norm|grad_norms|gradient_norm)/(.+)$", re.I)
_GRAD_SUFFIX = re.compile(r"^(.+?)[./](?:grad|grads|gradient|grad_norm)$", re.I)
_WEIGHT = re.compile(r"^(?:weight|weights|parameters|params|param|weight_norm)/(.+)$", re.I)
_WEIGHT_SUFFIX = re.compile(r"^(.+?)[./]weight_norm$", re.I)
_LOSS = {"loss", "train/loss", "loss/train", "train_loss", "training_loss", "train/loss_step", "loss/training"}
_LR = {"lr", "learning_rate", "train/lr", "train/learning_rate", "lr/train", "optimizer/lr"}
_PARAM_SUFFIX = re.compile(r"^(?:weight|bias|gamma|beta|scale|.+_weight|.+_bias)$")


class TensorBoardImportError(ValueError):
    """An event file or run directory that cannot be read or mapped; the message says what to fix."""


@dataclass
class _Stat:
    """One tensor at one step: sum of squares, max |value| (NaN: unknown), whether it held non-finite values."""

    sumsq: float
    maxabs: float
    nonfinite: bool


@dataclass
class Imported:
    """A run in gradhealth's column layout: steps x layers per metric, plus loss, lr and each row's stride."""

    layers: list[str]
    steps: list[int]
    metrics: dict[str, np.ndarray]  # name -> float32 [steps, layers]; NaN: not measured, +inf: not finite
    loss: list[float | None]
    lr: list[float | None]
    strides: list[int]
    tags: dict[str, str] = field(default_factory=dict)  # tag -> what it was mapped to ("ignored" when not)


def event_files(run_dir: Path) -> list[Path]:
    """The event files under `run_dir` (recursively), refused past the caps."""
    if not run_dir.is_dir():
        raise TensorBoardImportError(f"{run_dir}: not a directory (give the SummaryWriter's log_dir)")
    files = sorted(p for p in run_dir.rglob(EVENT_GLOB) if p.is_file())
    if not files:
        raise TensorBoardImportError(f"{run_dir}: no TensorBoard event files (events.out.tfevents.*) in it")
    if len(files) > MAX_FILES:
        raise TensorBoardImportError(f"{run_dir}: {len(files)} event files, more than {MAX_FILES}; import a subfolder")
    total = sum(p.stat().st_size for p in files)
    if total > MAX_TOTAL_BYTES:
        raise TensorBoardImportError(f"{run_dir}: {total} bytes of event files, more than {MAX_TOTAL_BYTES}")
    return files


def scan(path: Path) -> tuple[int, bool]:
    """Check the record framing of one event file without reading record bodies: (complete records, truncated tail).

    Each record is: length (u64) | masked crc32c of length (u32) | data | masked crc32c of data (u32).
    """
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TensorBoardImportError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES}-byte limit per event file")
    records, offset = 0, 0
    with path.open("rb") as handle:
        while offset < size:
            header = handle.read(12)
            if len(header) < 12:
                return records, True
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                raise TensorBoardImportError(f"{path}: record {records} at byte {offset} fails its length checksum")
            if length > MAX_RECORD_BYTES:
                raise TensorBoardImportError(
                    f"{path}: record {records} at byte {offset} declares {length} bytes, more than "
                    f"the {MAX_RECORD_BYTES}-byte limit per event"
                )
            if offset + 12 + length + 4 > size:
                return records, True  # a writer killed mid-record: TensorBoard stops here too
            records += 1
            if records > MAX_RECORDS:
                raise TensorBoardImportError(f"{path}: more than {MAX_RECORDS} events")
            offset += 12 + length + 4
            handle.seek(offset)
    return records, False


def read_events(path: Path) -> Iterator[Any]:
    """The Event protos of one scanned file, read by tensorboard's loader; a body failing its checksum is refused."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    expected, _ = scan(path)
    seen = 0
    for event in LegacyEventFileLoader(str(path)).Load():
        if seen == expected:
            break
        seen += 1
        yield event
    if seen < expected:
        raise TensorBoardImportError(f"{path}: event {seen} fails its checksum or does not parse (corrupt file)")


def _classify(tag: str) -> tuple[str, str]:
    """(kind, parameter or layer name) for a tag: kind is grad, weight, loss, lr or ignored."""
    low = tag.lower()
    if low in _LOSS:
        return "loss", ""
    if low in _LR or low.startswith("lr-"):
        return "lr", ""
    for kind, patterns in (("grad", (_GRAD, _GRAD_SUFFIX)), ("weight", (_WEIGHT, _WEIGHT_SUFFIX))):
        for pattern in patterns:
            match = pattern.match(tag)
            if match:
                return kind, match.group(1).replace("/", ".")
    return "ignored", ""


def _layer(parameter: str) -> str:
    """`encoder.fc1.weight` -> `encoder.fc1`; a name without a parameter suffix is a layer already."""
    head, _, last = parameter.rpartition(".")
    return head if head and _PARAM_SUFFIX.match(last) else parameter


def _stat(value: Any) -> _Stat | float | None:
    """A histogram's statistics, a scalar's value, or None for other summaries (images, text, ...)."""
    kind = value.WhichOneof("value")
    if kind == "histo":
        histo = value.histo
        bounds = (histo.min, histo.max, histo.sum_squares)
        maxabs = max(abs(histo.min), abs(histo.max)) if histo.num else 0.0
        return _Stat(float(histo.sum_squares), float(maxabs), not all(math.isfinite(b) for b in bounds))
    if kind == "simple_value":
        return float(value.simple_value)
    return None


def load(run_dir: Path) -> Imported:
    """Read and map every event file under `run_dir`; refuse, naming the tags seen, when no gradient tag maps."""
    tensors: dict[tuple[str, str], dict[str, dict[int, _Stat]]] = defaultdict(lambda: defaultdict(dict))
    run_level: dict[str, dict[int, float]] = {"loss": {}, "lr": {}}
    tags: dict[str, str] = {}
    for path in event_files(run_dir):
        for event in read_events(path):
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                kind, name = _classify(value.tag)
                stat = _stat(value)
                if stat is None or (kind in ("loss", "lr") and not isinstance(stat, float)):
                    kind = "ignored"
                tags[value.tag] = f"{kind}:{_layer(name)}" if kind in ("grad", "weight") else kind
                if kind in ("loss", "lr"):
                    run_level[kind][int(event.step)] = float(stat)  # type: ignore[arg-type]
                elif kind in ("grad", "weight"):
                    if isinstance(stat, float):
                        stat = _Stat(stat * stat, math.nan, not math.isfinite(stat))
                    tensors[(kind, _layer(name))][name][int(event.step)] = stat  # a later event replaces it
    layers = sorted({layer for kind, layer in tensors if kind == "grad"})
    if not layers:
        seen = sorted(tags)
        shown = ", ".join(seen[:40]) + (f", ... ({len(seen)} in all)" if len(seen) > 40 else "")
        raise TensorBoardImportError(
            f"{run_dir}: no gradient tags to map (grad/<layer>, gradients/<param>, <param>.grad, ... as histograms or "
            f"norms); tags seen: {shown or 'none'}"
        )
    if len(layers) > MAX_LAYERS:
        raise TensorBoardImportError(f"{run_dir}: {len(layers)} layers, more than {MAX_LAYERS}")
    steps = sorted(
        {s for params in tensors.values() for by_step in params.values() for s in by_step}
        | set(run_level["loss"])
        | set(run_level["lr"])
    )
    if len(steps) > MAX_STEPS:
        raise TensorBoardImportError(f"{run_dir}: {len(steps)} logged steps, more than {MAX_STEPS}")
    return Imported(
        layers=layers,
        steps=steps,
        metrics=_columns(tensors, layers, steps),
        loss=[run_level["loss"].get(s) for s in steps],
        lr=[run_level["lr"].get(s) for s in steps],
        strides=[max(1, b - a) for a, b in zip([steps[0] - 1, *steps], steps, strict=False)],
        tags=tags,
    )


def _columns(
    tensors: dict[tuple[str, str], dict[str, dict[int, _Stat]]], layers: list[str], steps: list[int]
) -> dict[str, np.ndarray]:
    """Per metric, a [steps, layers] float32 table: parameters of a layer combined, NaN where nothing was logged."""
    import numpy as np

    row = {step: i for i, step in enumerate(steps)}
    out = {name: np.full((len(steps), len(layers)), np.nan, dtype=np.float32) for name in METRICS}
    for column, layer in enumerate(layers):
        for kind, norm_name in (("grad", "grad_norm"), ("weight", "weight_norm")):
            at: dict[int, list[_Stat]] = defaultdict(list)
            params = tensors.get((kind, layer), {})
            for by_step in params.values():
                for step, stat in by_step.items():
                    at[step].append(stat)
            for step, stats in at.items():
                if len(stats) < len(params):
                    continue  # some of the layer's parameters were not logged at this step: its norm is unknown
                bad = sum(s.nonfinite for s in stats)
                norm = math.inf if bad else math.sqrt(sum(s.sumsq for s in stats))
                out[norm_name][row[step], column] = norm
                if kind == "grad":
                    out["nonfinite"][row[step], column] = bad
                    maxima = [s.maxabs for s in stats if not math.isnan(s.maxabs)]
                    if maxima:
                        out["grad_max_abs"][row[step], column] = math.inf if bad else max(maxima)
    return out


def _finite_or_inf(value: float | None) -> float | None:
    """A logged non-finite loss or lr is sent as +inf (NaN would read as "not logged")."""
    return value if value is None or math.isfinite(value) else math.inf


def batches(imported: Imported, rows: int = 4096) -> Iterator[bytes]:
    """The run as msgpack log batches (docs/runs.md): float32 `bin` metrics, per-row strides."""
    import msgpack
    import numpy as np

    per_batch = max(1, min(rows, (16 * 2**20) // (len(METRICS) * len(imported.layers))))
    for seq, start in enumerate(range(0, len(imported.steps), per_batch)):
        stop = start + per_batch
        body = {
            "seq": seq,
            "steps": imported.steps[start:stop],
            "loss": [_finite_or_inf(v) for v in imported.loss[start:stop]],
            "lr": [_finite_or_inf(v) for v in imported.lr[start:stop]],
            "metrics": {
                name: np.ascontiguousarray(table[start:stop], dtype="<f4").tobytes()
                for name, table in imported.metrics.items()
            },
            "dropped": 0,
            "stride": imported.strides[start:stop],
        }
        yield msgpack.packb(body, use_bin_type=True)


def upload(client: Any, imported: Imported, name: str, source: str) -> str:
    """Create the run on the service, send its batches (each diagnosed as it lands), return the run id."""
    layers = [{"name": layer, "type": "", "num_parameters": 0} for layer in imported.layers]
    mapped = sum(1 for kind in imported.tags.values() if kind != "ignored")
    config = {"source": "tensorboard", "run_dir": source, "tags": len(imported.tags), "mapped_tags": mapped}
    run = client.runs.create(name, layers, list(METRICS), config)
    for body in batches(imported):
        client.runs.append(run.id, body)
    return str(run.id)


def add_import_parser(subparsers: Any) -> None:
    """Register `gradhealth import-tensorboard`."""
    p = subparsers.add_parser(
        "import-tensorboard",
        help="diagnose a finished run from its TensorBoard event files",
        description=(
            "Read the gradient/weight histograms and scalars and the loss of a SummaryWriter log_dir (or wandb.watch "
            "logs exported to TensorBoard), upload them as a run and print its diagnosis. Exit 0 with a report, "
            "2 when the files cannot be read or mapped (the message lists the tags seen), 3 when the service fails."
        ),
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the folder holding events.out.tfevents.* files")
    p.add_argument("--name", help="the run's name on the service (default: the folder's name)")
    p.add_argument("--server", help="gradhealth service URL (default $GRADHEALTH_URL)")
    p.add_argument("--api-key", help="API key (default $GRADHEALTH_API_KEY)")
    p.add_argument("--format", choices=["summary", "json", "markdown"], default="summary", help="output (summary)")
    p.set_defaults(handler=run_import)


def run_import(args: Any) -> int:
    """Read, map, upload, print the report; input problems exit 2, service problems 3."""
    import sys

    try:
        imported = load(args.run_dir)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "tensorboard":
            raise
        print("gradhealth: error: import-tensorboard needs: pip install 'gradhealth[tensorboard]'", file=sys.stderr)
        return 2
    except (TensorBoardImportError, OSError) as exc:
        print(f"gradhealth: error: {exc}", file=sys.stderr)
        return 2
    from gradhealth.sdk import Client, GradhealthError

    name = args.name or args.run_dir.resolve().name or "tensorboard-run"
    try:
        with Client(base_url=args.server, api_key=args.api_key) as client:
            run_id = upload(client, imported, name, str(args.run_dir))
            report = client.runs.report(run_id)
    except GradhealthError as exc:
        print(f"gradhealth: error: the service did not take the run: {exc}", file=sys.stderr)
        return 3
    if args.format == "json":
        print(report.model_dump_json(indent=2))
        return 0
    if args.format == "markdown":
        from gradhealth.report import to_markdown

        print(to_markdown(report))
        return 0
    ignored = sorted(tag for tag, kind in imported.tags.items() if kind == "ignored")
    print(f"run {run_id}: {len(imported.steps)} steps, {len(imported.layers)} layers, health {report.health}")
    if ignored:
        print(f"ignored {len(ignored)} tags: {', '.join(ignored[:20])}{' ...' if len(ignored) > 20 else ''}")
    for finding in report.findings:
        print(f"  {finding.severity:8} {finding.rule} @ step {finding.step}: {finding.title}")
    return 0
