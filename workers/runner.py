"""One analysis attempt: claim the row, run the engine in the sandbox, record the outcome."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from gradhealth.store import analyses
from gradhealth.store.blobs import BlobMissing, BlobStoreUnavailable, blob_store
from gradhealth.store.settings import Settings

from .engine_child import MODEL_FILE, batch_file_names
from .sandbox import Aborted, ChildFailure, Limits, run_in_child

log = logging.getLogger(__name__)
ENGINE_TARGET = "gradhealth.workers.engine_child:analyze"
PROGRESS_MIN_INTERVAL = 0.25  # seconds between progress writes, so tiny phases don't flood the DB


def execute_analysis(settings: Settings, analysis_id: str, worker: str) -> str:
    """Run the analysis if nobody else is or has; returns the outcome for logs and tests.

    Outcomes: "succeeded", "failed", "skipped" (finished, gone or running elsewhere),
    "superseded" (this attempt lost its lease to another worker; its result is discarded).
    """
    claim = analyses.claim(settings, analysis_id, worker)
    if claim is None:
        log.info("analysis %s: nothing to do (finished, missing or running elsewhere)", analysis_id)
        return "skipped"
    log.info("analysis %s: attempt %d on %s", analysis_id, claim.attempt, worker)
    keys = [claim.model_key, *(claim.batch_keys or (claim.batch_key,))]
    try:
        with blob_store(settings).local_copies(keys) as paths:  # S3: a private temp folder, removed after
            return _run(settings, claim, analysis_id, paths[0], paths[1:])
    except BlobMissing as exc:
        analyses.fail(settings, claim, "blob_missing", f"an uploaded file is missing from storage: {exc}")
        return "failed"
    except BlobStoreUnavailable as exc:
        log.warning("analysis %s: %s", analysis_id, exc)
        analyses.fail(settings, claim, "storage_unavailable", f"{exc}; submit the analysis again once storage answers")
        return "failed"


def _run(settings: Settings, claim: analyses.Claim, analysis_id: str, model_path: Path, batch_paths: list[Path]) -> str:
    """The sandboxed engine run on local copies of the inputs; records the outcome."""
    names = batch_file_names(len(batch_paths))
    payload = {
        "model_format": claim.model_format,
        "options": json.loads(claim.options),
        "device": settings.device,
        "batches": names,
    }
    files = {MODEL_FILE: model_path, **dict(zip(names, batch_paths, strict=True))}
    last_at, last_phase = 0.0, "starting"

    def on_progress(phase: str | None, fraction: float | None) -> bool:
        """Write phase changes at once, other progress at most every 0.25 s, heartbeats when due."""
        nonlocal last_at, last_phase
        now = time.monotonic()
        wait = settings.heartbeat_seconds if phase is None else PROGRESS_MIN_INTERVAL
        if (phase is None or phase == last_phase) and now - last_at < wait:
            return True
        last_at, last_phase = now, phase or last_phase
        return analyses.heartbeat(settings, claim, phase, fraction)

    limits = Limits(time_s=settings.analysis_time_limit, memory_mb=settings.analysis_memory_limit_mb)
    try:
        result = run_in_child(ENGINE_TARGET, payload, limits, on_progress, files=files, warm=settings.warm_sandbox)
    except Aborted:
        log.warning("analysis %s: lease lost to another attempt; stopped", analysis_id)
        return "superseded"
    except ChildFailure as exc:
        log.info("analysis %s failed: %s: %s", analysis_id, exc.code, exc.message)
        return "failed" if analyses.fail(settings, claim, exc.code, exc.message) else "superseded"
    stored = analyses.complete(
        settings, claim, result["report"], result["health"], float(result["run_seconds"]), result.get("note")
    )
    return "succeeded" if stored else "superseded"
