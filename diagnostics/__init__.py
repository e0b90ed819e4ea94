"""The gradhealth engine: load a model package, measure one training step, diagnose, advise."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from gradhealth.report import Finding, Report
from torch import Tensor

from .batch import read_batch, write_batch
from .engine import Analyzer, ProgressFn
from .errors import ExportUnsupportedError, InputError, UnsafeArchiveError
from .export import PackageMetadata, as_input_tuple, export_per_sample_loss
from .loading import LoadedModel, from_exported_program, load_package
from .multi_batch import run_batches, share
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
    batch_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    options: AnalysisOptions | None = None,
    progress: ProgressFn | None = None,
) -> Report:
    """Analyse a model package on a batch file, or several merged (multi_batch): the path the CLI takes."""
    options = options or AnalysisOptions()
    paths = [batch_path] if isinstance(batch_path, str | os.PathLike) else list(batch_path)
    analyzer = Analyzer(load_package(model_path, loss=options.loss))
    return run_batches(
        lambda i: analyzer.run(*read_batch(paths[i]), options, progress=share(progress, i, len(paths))), len(paths)
    )


def analyze_module(
    model: torch.nn.Module,
    loss: str | Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor | tuple[Tensor, ...],
    targets: Tensor,
    options: AnalysisOptions | None = None,
    more_batches: Sequence[tuple[Tensor | tuple[Tensor, ...], Tensor]] = (),
) -> Report:
    """Analyse an in-memory model: exported exactly as gradhealth.package() would, then measured (and merged)."""
    options = options or AnalysisOptions()
    inputs = as_input_tuple(inputs)
    ep = export_per_sample_loss(model, loss, inputs, targets)
    metadata = PackageMetadata(
        returns_loss=True, num_inputs=len(inputs), loss=loss if isinstance(loss, str) else "custom"
    )
    analyzer = Analyzer(from_exported_program(ep, metadata, None))
    batches = [(inputs, targets), *((as_input_tuple(x), y) for x, y in more_batches)]
    return run_batches(lambda i: analyzer.run(batches[i][0], batches[i][1], options), len(batches))
