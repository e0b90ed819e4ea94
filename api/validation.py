"""Check uploads before accepting them: archive safety and layout, batch keys and shapes.

Runs in the API process on the staged file and never executes or unpickles client bytes:
the .pt2 check reads JSON entries and raw tensor records only.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from gradhealth.diagnostics.archive_check import check_pt2_archive
from gradhealth.diagnostics.batch import read_batch
from gradhealth.diagnostics.errors import InputError
from gradhealth.diagnostics.export import PACKAGE_METADATA_FILE
from gradhealth.diagnostics.loading import sniff_format

MAX_UNCOMPRESSED_BYTES = 8 * 2**30  # the same bound the .pt2 check applies, for every format


@dataclass(frozen=True)
class ModelFacts:
    """What the API records about a model package."""

    format: str
    num_parameters: int | None
    returns_loss: bool | None


def _user_facing(exc: InputError, path: Path, filename: str | None) -> InputError:
    """Replace the server's temp path with the client's file name in the message."""
    name = filename or "the upload"
    text = str(exc).replace(repr(os.fspath(path)), repr(name)).replace(os.fspath(path), name)
    clone = type(exc)(text)
    return clone


def _read_entry(archive: zipfile.ZipFile, suffix: str) -> bytes | None:
    for name in archive.namelist():
        if name.endswith(suffix) and name.count("/") == suffix.count("/") + 1:
            return archive.read(name)
    return None


def _package_metadata(archive: zipfile.ZipFile) -> bool | None:
    raw = _read_entry(archive, f"extra/{PACKAGE_METADATA_FILE}")
    try:
        return bool(json.loads(raw)["returns_loss"]) if raw else False
    except (ValueError, KeyError, TypeError):
        raise InputError(f"the package's {PACKAGE_METADATA_FILE} is malformed") from None


def _num_parameters(archive: zipfile.ZipFile) -> int | None:
    """Sum parameter sizes from the weights config (JSON); no tensor is materialised."""
    total = 0
    for name in archive.namelist():
        if not name.endswith("_weights_config.json"):
            continue
        config = json.loads(archive.read(name)).get("config", {})
        for meta in config.values():
            if meta.get("is_param"):
                total += math.prod(s["as_int"] for s in meta["tensor_meta"]["sizes"])
    return total


def inspect_model(path: Path, filename: str | None) -> ModelFacts:
    """Accept a torch.export archive that passes the safety checks, else InputError (TorchScript too)."""
    try:
        fmt = sniff_format(path)
        check_pt2_archive(path)
        with zipfile.ZipFile(path) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_UNCOMPRESSED_BYTES:
                raise InputError(f"{filename or 'the upload'} unpacks to more than 8 GiB; refused")
            bad = archive.testzip()
            if bad is not None:
                raise InputError(
                    f"{filename or 'the upload'} is corrupt: entry {bad} fails its CRC check; upload the file again"
                )
            returns_loss = _package_metadata(archive)
            params = _num_parameters(archive)
    except InputError as exc:
        raise _user_facing(exc, path, filename) from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{filename or 'the upload'} is truncated or corrupt ({type(exc).__name__}: {exc}); upload the file again"
        ) from None
    return ModelFacts(format=fmt, num_parameters=params, returns_loss=returns_loss)


def inspect_batch(path: Path, filename: str | None) -> dict[str, list[int]]:
    """Read the batch exactly as the worker will (safetensors, no pickle) and return its shapes."""
    try:
        inputs, targets = read_batch(path)
    except InputError as exc:
        raise _user_facing(exc, path, filename) from None
    if len(inputs) == 1:
        shapes = {"inputs": list(inputs[0].shape)}
    else:
        shapes = {f"inputs.{i}": list(t.shape) for i, t in enumerate(inputs)}
    shapes["targets"] = list(targets.shape)
    return shapes
