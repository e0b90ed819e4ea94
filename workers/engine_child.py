"""What runs inside the sandbox child: load the package, read the batch, run the engine.

This is the only place a client's model executes and the only place CUDA is touched.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .sandbox_child import limit_memory
from .sandbox_errors import ChildFailure, ProgressFn

if TYPE_CHECKING:  # the worker process itself never imports torch or the engine
    from gradhealth.diagnostics import Analyzer
    from gradhealth.report import Report
    from torch import Tensor

MODEL_FILE = "model.pt2"  # torch.export.load wants a ".pt2" name; blobs are named by hash only
BATCH_FILE = "batch.safetensors"
MAX_BATCH_FILES = 16  # as the API's bound: a payload naming more is refused before anything loads
LOAD_SHARE = 0.3  # progress fraction reported once loading is done; the engine maps onto the rest


def analyze(payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """Run one analysis; on out-of-memory retry with half the batch until one sample remains."""
    progress("loading", 0.01)
    from gradhealth.diagnostics import AnalysisOptions, Analyzer, load_package
    from gradhealth.diagnostics.engine import pick_device

    options = AnalysisOptions.model_validate(payload["options"])
    device = pick_device(options.device or payload.get("device"))
    if device.type == "cpu":
        limit_memory(int(payload.get("memory_mb") or 0))  # CUDA reserves huge address space: CPU only
    options = options.model_copy(update={"device": str(device)})
    started = time.perf_counter()
    names = list(payload.get("batches") or [BATCH_FILE])
    if not 1 <= len(names) <= MAX_BATCH_FILES:
        raise ChildFailure("invalid_input", f"between 1 and {MAX_BATCH_FILES} batches, got {len(names)}")
    loaded = load_package(payload["files"][MODEL_FILE], loss=options.loss)
    progress("loaded", LOAD_SHARE)
    report, note = _run_batches(Analyzer(loaded), [payload["files"][n] for n in names], options, device, progress)
    if note:
        report.environment["batch_note"] = note
    return {
        "report": report.model_dump_json(),
        "health": report.health,
        "note": note,
        "run_seconds": time.perf_counter() - started,
    }


def batch_file_names(count: int) -> list[str]:
    """Where each batch is staged: the first keeps the one-batch name, the rest are numbered."""
    return [BATCH_FILE] + [f"batch.{i}.safetensors" for i in range(1, count)]


def _run_batches(
    analyzer: Analyzer, paths: list[str], options: Any, device: Any, progress: ProgressFn
) -> tuple[Report, str | None]:
    """Read and analyse each batch in turn (one in memory at a time), then merge (diagnostics.multi_batch)."""
    from gradhealth.diagnostics import InputError, read_batch
    from gradhealth.diagnostics.multi_batch import merge_reports

    reports: list[Report] = []
    notes: list[str] = []
    n = len(paths)
    for i, path in enumerate(paths):
        inputs, targets = read_batch(path)

        def share(phase: str, fraction: float, i: int = i) -> None:
            """Batch i's progress as its slice of the engine's share of the bar."""
            done = (fraction - LOAD_SHARE) / (1 - LOAD_SHARE)  # of this batch
            progress(phase, LOAD_SHARE + (1 - LOAD_SHARE) * (i + done) / n)

        try:
            report, note = _run_shrinking(analyzer, inputs, targets, options, device, share if n > 1 else progress)
        except InputError as exc:  # e.g. a batch that does not fit the model: say which one
            if n == 1:
                raise
            raise ChildFailure(exc.code, f"batch {i + 1} of {n}: {exc}") from None
        reports.append(report)
        if note:
            notes.append(note if n == 1 else f"batch {i + 1}: {note}")
    return merge_reports(reports), "; ".join(notes) or None


def _run_shrinking(
    analyzer: Analyzer, inputs: tuple[Tensor, ...], targets: Tensor, options: Any, device: Any, progress: ProgressFn
) -> tuple[Report, str | None]:
    """Run the engine; on out-of-memory (a MemoryError by type) halve the batch, down to one sample."""
    import torch

    total = size = int(targets.shape[0]) if targets.dim() else 1
    note = None
    while True:
        try:
            report = analyzer.run(
                tuple(t[:size] for t in inputs),
                targets[:size],
                options,
                progress=lambda phase, f: progress(phase, LOAD_SHARE + (1 - LOAD_SHARE) * f),
            )
            return report, note
        except MemoryError as exc:  # ModelOutOfMemory from the engine, or Python's own
            if size <= 1:
                raise ChildFailure(
                    "out_of_memory", f"the model does not fit in {device.type} memory even with one sample ({exc})"
                ) from None
            size = max(1, size // 2)
            note = f"out of {device.type} memory with {total} samples; analysed the first {size}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            progress("retry_smaller_batch", LOAD_SHARE)
