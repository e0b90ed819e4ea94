"""Liveness, readiness (database, broker and blob storage answer) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from gradhealth.store import analyses, ops_metrics
from gradhealth.store.blobs import blob_store
from gradhealth.store.celery_app import ping_broker
from gradhealth.store.db import ping, session_factory
from gradhealth.store.settings import Settings
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import SettingsDep
from ..errors import ApiError
from ..metrics import ANALYSES, FAILED_BY_CODE, QUEUE_LENGTH, WEBHOOK_FAILURES, exposition
from ..openapi import error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (no dependencies checked)."""
    return {"status": "ok"}


def _ping_blobs(settings: Settings) -> None:
    """Ask the blob store about a key nobody has: S3 answers 404 when reachable with valid credentials."""
    blob_store(settings).exists("0" * 64)


def _check(settings: Settings) -> dict[str, str]:
    checks: dict[str, str] = {}
    for name, probe in (("database", ping), ("broker", ping_broker), ("blobs", _ping_blobs)):
        try:
            probe(settings)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"{type(exc).__name__}: {exc}"[:300]
    return checks


@router.get("/readyz", responses=error_responses(503))
async def readyz(settings: SettingsDep) -> dict[str, object]:
    """Ready to take work: the database, the broker and blob storage answer (503 otherwise)."""
    checks = await run_in_threadpool(_check, settings)
    if any(value != "ok" for value in checks.values()):
        failing = ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
        raise ApiError(503, f"not ready: {failing}", code="not_ready", detail=checks)
    return {"status": "ok", "checks": checks}


def _count_analyses(settings: Settings) -> None:
    with session_factory(settings)() as session:
        counts = analyses.count_by_status(session)
        failed, webhooks = ops_metrics.failed_by_code(session), ops_metrics.webhook_failures(session)
    for status in ("queued", "running", "succeeded", "failed"):
        ANALYSES.labels(status).set(counts.get(status, 0))
    for code in {"out_of_memory", "timeout", *failed}:
        FAILED_BY_CODE.labels(code).set(failed.get(code, 0))
    for category in {"connect_failed", "timeout", "http_status", "refused_address", *webhooks}:
        WEBHOOK_FAILURES.labels(category).set(webhooks.get(category, 0))
    try:
        lengths = ops_metrics.queue_lengths(settings)
    except Exception:  # a broker outage shows on /readyz; the scrape still answers
        lengths = {}
    for queue, n in lengths.items():
        QUEUE_LENGTH.labels(queue).set(n)


@router.get("/metrics", include_in_schema=False)
async def metrics(settings: SettingsDep) -> Response:
    """Prometheus text format."""
    await run_in_threadpool(_count_analyses, settings)
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
