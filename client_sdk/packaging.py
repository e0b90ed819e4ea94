"""Build the files a gradhealth worker runs: the model package and the batch."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from gradhealth.diagnostics.batch import write_batch
from gradhealth.diagnostics.export import (
    PACKAGE_METADATA_FILE,
    PackageMetadata,
    as_input_tuple,
    export_per_sample_loss,
)
from torch import Tensor

LossArg = str | Callable[[Tensor, Tensor], Tensor]


def package(
    model: torch.nn.Module,
    loss: LossArg,
    example_inputs: Tensor | tuple[Tensor, ...],
    example_targets: Tensor,
    path: str | os.PathLike[str],
) -> Path:
    """Save model+loss as one module returning the per-sample loss [B] (train mode, dynamic batch).

    Args:
        model: the model; it is put in train mode for tracing and left in that mode.
        loss: a loss name ("cross_entropy", "mse", ...) or a callable (outputs, targets) -> per-sample
            losses (use reduction="none").
        example_inputs: one tensor or a tuple of tensors, batch dimension first (>= 2 samples).
        example_targets: targets for the example batch.
        path: where to write the torch.export archive (".pt2").

    Returns:
        The path written.
    """
    inputs = as_input_tuple(example_inputs)
    metadata = PackageMetadata(
        returns_loss=True, num_inputs=len(inputs), loss=loss if isinstance(loss, str) else "custom"
    )
    path = Path(path)
    exported = export_per_sample_loss(model, loss, inputs, example_targets)
    torch.export.save(exported, str(path), extra_files={PACKAGE_METADATA_FILE: metadata.to_json()})
    return path


def save_batch(
    path: str | os.PathLike[str],
    inputs: Tensor | tuple[Tensor, ...],
    targets: Tensor,
    *,
    dataset: str | None = None,
    input_dtype_before_normalization: str | None = None,
) -> Path:
    """Write a sample batch as safetensors (inputs or inputs.0.., targets) for analysis."""
    metadata = {}
    if dataset:
        metadata["dataset"] = dataset
    if input_dtype_before_normalization:
        metadata["input_dtype_before_normalization"] = input_dtype_before_normalization
    return write_batch(path, inputs, targets, metadata)
