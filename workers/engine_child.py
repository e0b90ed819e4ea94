"""What runs inside the sandbox child: load the package, read the batch, run the engine.

This is the only place a client's model executes and the only place CUDA is touched.
"""

from __future__ import annotations

import time
from typing import Any

from .sandbox_child import limit_memory
from .sandbox_errors import ChildFailure, ProgressFn

MODEL_FILE = "model.pt2"  # torch.export.load wants a ".pt2" name; blobs are named by hash only
BATCH_FILE = "batch.safetensors"
LOAD_SHARE = 0.3  # progress fraction reported once loading is done; the engine maps onto the rest
_OOM_MARKERS = ("out of memory", "can't allocate memory", "OutOfMemoryError", "Cannot allocate memory")


def _is_oom(exc: BaseException) -> bool:
    """CUDA OOM, CPU allocator failure under RLIMIT_AS, or the engine's wrapped form of either."""
    return isinstance(exc, MemoryError) or any(marker in str(exc) for marker in _OOM_MARKERS)


def analyze(payload: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """Run one analysis; on out-of-memory retry with half the batch until one sample remains."""
    progress("loading", 0.01)
    import torch
    from gradhealth.diagnostics import AnalysisOptions, Analyzer, load_package, read_batch
    from gradhealth.diagnostics.engine import pick_device

    options = AnalysisOptions.model_validate(payload["options"])
    device = pick_device(options.device or payload.get("device"))
    if device.type == "cpu":
        limit_memory(int(payload.get("memory_mb") or 0))  # CUDA reserves huge address space: CPU only
    options = options.model_copy(update={"device": str(device)})
    started = time.perf_counter()
    loaded = load_package(payload["files"][MODEL_FILE], loss=options.loss)
    inputs, targets = read_batch(payload["files"][BATCH_FILE])
    analyzer = Analyzer(loaded)
    progress("loaded", LOAD_SHARE)
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
            break
        except Exception as exc:
            if not _is_oom(exc) or size <= 1:
                if _is_oom(exc):
                    raise ChildFailure(
                        "out_of_memory",
                        f"the model does not fit in {device.type} memory even with one sample "
                        f"({type(exc).__name__}: {str(exc)[:300]})",
                    ) from None
                raise
            size = max(1, size // 2)
            note = f"out of {device.type} memory with {total} samples; analysed the first {size}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            progress("retry_smaller_batch", LOAD_SHARE)
    if note:
        report.environment["batch_note"] = note
    return {
        "report": report.model_dump_json(),
        "health": report.health,
        "note": note,
        "run_seconds": time.perf_counter() - started,
    }
