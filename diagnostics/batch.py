"""The batch file format: safetensors with inputs[.i] and targets, nothing pickled."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import InputError
from .export import as_input_tuple, check_batch_shapes


def write_batch(
    path: str | os.PathLike[str],
    inputs: Tensor | tuple[Tensor, ...],
    targets: Tensor,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a batch so a worker can read it without unpickling anything."""
    inputs = as_input_tuple(inputs)
    check_batch_shapes(inputs, targets)
    tensors: dict[str, Tensor] = {"targets": targets.detach().cpu().contiguous()}
    if len(inputs) == 1:
        tensors["inputs"] = inputs[0].detach().cpu().contiguous()
    else:
        for i, tensor in enumerate(inputs):
            tensors[f"inputs.{i}"] = tensor.detach().cpu().contiguous()
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata or {})
    return path


def read_batch(path: str | os.PathLike[str]) -> tuple[tuple[Tensor, ...], Tensor]:
    """Read a batch written by write_batch (or any safetensors file with the same keys)."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read the batch {os.fspath(path)!r} as safetensors: {exc}") from None
    if "targets" not in tensors:
        raise InputError(f"the batch has no 'targets' tensor; found keys {sorted(tensors)}")
    if "inputs" in tensors:
        inputs: tuple[Tensor, ...] = (tensors["inputs"],)
    else:
        count = sum(1 for key in tensors if key.startswith("inputs."))
        try:
            inputs = tuple(tensors[f"inputs.{i}"] for i in range(count))
        except KeyError:
            raise InputError(f"batch inputs must be inputs.0..inputs.N-1; found {sorted(tensors)}") from None
        if not inputs:
            raise InputError(f"the batch has no 'inputs' or 'inputs.0' tensor; found {sorted(tensors)}")
    check_batch_shapes(inputs, tensors["targets"])
    return inputs, tensors["targets"]


def float_inputs(inputs: tuple[Tensor, ...]) -> list[tuple[int, Tensor]]:
    """The inputs whose statistics mean something (floating point, not token ids)."""
    return [(i, t) for i, t in enumerate(inputs) if torch.is_floating_point(t)]
