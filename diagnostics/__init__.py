"""The gradhealth engine: load a model package, measure one training step, diagnose, advise."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from gradhealth.report import Finding, Report
from torch import Tensor

from .batch import read_batch, write_batch
from .engine import Analyzer, ProgressFn
from .errors import ExportUnsupportedError, InputError, UnsafeArchiveError
from .export import PackageMetadata, as_input_tuple, export_per_sample_loss
from .loading import LoadedModel, from_exported_program, load_package
from .options import AnalysisOptions, OptimizerSpec

__all__ = [
    "AnalysisOptions",
    "Analyzer",
    "ExportUnsupportedError",
    "Finding",
    "InputError",
    "LoadedModel",
    "OptimizerSpec",
    "Report",
    "UnsafeArchiveError",
    "analyze_files",
    "analyze_module",
    "load_package",
    "read_batch",
    "write_batch",
]


def analyze_files(
    model_path: str | os.PathLike[str],
    batch_path: str | os.PathLike[str],
    options: AnalysisOptions | None = None,
    progress: ProgressFn | None = None,
) -> Report:
    """Analyse a model package on a batch file: the path the CLI and the workers take."""
    options = options or AnalysisOptions()
    loaded = load_package(model_path, loss=options.loss)
    inputs, targets = read_batch(batch_path)
    return Analyzer(loaded).run(inputs, targets, options, progress=progress)


def analyze_module(
    model: torch.nn.Module,
    loss: str | Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor | tuple[Tensor, ...],
    targets: Tensor,
    options: AnalysisOptions | None = None,
) -> Report:
    """Analyse an in-memory model: exported exactly as gradhealth.package() would, then measured."""
    options = options or AnalysisOptions()
    inputs = as_input_tuple(inputs)
    ep = export_per_sample_loss(model, loss, inputs, targets)
    metadata = PackageMetadata(
        returns_loss=True, num_inputs=len(inputs), loss=loss if isinstance(loss, str) else "custom"
    )
    loaded = from_exported_program(ep, metadata, None)
    return Analyzer(loaded).run(inputs, targets, options)
