"""DELETE for analyses, runs, batches and models, age-based pruning, and the deletion log (issue 15)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from gradhealth.store import retention, rows
from gradhealth.store.blobs import BlobStore
from gradhealth.store.db import session_factory
from gradhealth.store.keys import Principal
from gradhealth.store.models import Analysis, Batch, Deletion, ModelPackage, TrainingRun
from gradhealth.store.settings import Settings
from pydantic import BaseModel, ConfigDict, Field

from ..deps import AdminAccess, SettingsDep, StoreDep, WriteAccess
from ..errors import ApiError
from ..metrics import DELETED
from ..openapi import error_responses
from ..paging import Paging
from ..resources import get_owned
from ..schemas import UtcDatetime

router = APIRouter()
_TABLES: dict[str, tuple[type[Analysis] | type[TrainingRun] | type[Batch] | type[ModelPackage], str]] = {
    "analysis": (Analysis, "analysis"),
    "run": (TrainingRun, "run"),
    "batch": (Batch, "batch"),
    "model": (ModelPackage, "model"),
}


def _actor(principal: Principal) -> str:
    return f"key:{principal.key_id}"


def _delete(settings: Settings, store: BlobStore, principal: Principal, kind: str, object_id: str) -> None:
    """One transaction for the row and its log entry; the blob goes after the commit, when nothing holds it."""
    table, what = _TABLES[kind]
    with session_factory(settings)() as session:
        row = get_owned(session, table, object_id, principal, what)
        sha: str | None = None
        try:
            if isinstance(row, Analysis):
                retention.delete_analysis(session, row, _actor(principal))
            elif isinstance(row, TrainingRun):
                retention.delete_run(session, row, _actor(principal))
            else:
                assert isinstance(row, Batch | ModelPackage)
                sha = retention.delete_upload(session, row, _actor(principal))
        except (retention.StillReferenced, retention.NotDeletable) as exc:
            session.rollback()
            raise ApiError(409, str(exc), code="still_referenced" if kind != "analysis" else "conflict") from None
        session.commit()
        DELETED.labels(kind, "request").inc()
        if sha is not None:
            blobs = retention.delete_blobs(store, [sha], session, _actor(principal), "request")
            DELETED.labels("blob", "request").inc(len(blobs))


_RESPONSES = error_responses(404, 409)


@router.delete("/analyses/{analysis_id}", status_code=204, tags=["analyses"], responses=_RESPONSES)
async def delete_analysis(analysis_id: str, principal: WriteAccess, settings: SettingsDep, store: StoreDep) -> Response:
    """Delete a finished analysis and its report (409 while queued/running or in an audit's history)."""
    await run_in_threadpool(_delete, settings, store, principal, "analysis", analysis_id)
    return Response(status_code=204)


@router.delete("/runs/{run_id}", status_code=204, tags=["runs"], responses=_RESPONSES)
async def delete_run(run_id: str, principal: WriteAccess, settings: SettingsDep, store: StoreDep) -> Response:
    """Delete a watched training run with its logs and webhook deliveries."""
    await run_in_threadpool(_delete, settings, store, principal, "run", run_id)
    return Response(status_code=204)


@router.delete("/batches/{batch_id}", status_code=204, tags=["batches"], responses=_RESPONSES)
async def delete_batch(batch_id: str, principal: WriteAccess, settings: SettingsDep, store: StoreDep) -> Response:
    """Delete a batch no analysis or audit uses (409 naming the user otherwise); its blob goes when unshared."""
    await run_in_threadpool(_delete, settings, store, principal, "batch", batch_id)
    return Response(status_code=204)


@router.delete("/models/{model_id}", status_code=204, tags=["models"], responses=_RESPONSES)
async def delete_model(model_id: str, principal: WriteAccess, settings: SettingsDep, store: StoreDep) -> Response:
    """Delete a model no analysis or audit uses (409 naming the user otherwise); its blob goes when unshared."""
    await run_in_threadpool(_delete, settings, store, principal, "model", model_id)
    return Response(status_code=204)


class PruneRequest(BaseModel):
    """Delete this project's finished, unreferenced resources older than an age."""

    model_config = ConfigDict(extra="forbid")
    older_than: str = Field(description="age such as 30d, 12h, 2w (units s, m, h, d, w)", max_length=16)
    dry_run: bool = Field(default=False, description="list what would be deleted and delete nothing")


class PruneResult(BaseModel):
    """What was deleted (or would be, in a dry run), by kind."""

    cutoff: datetime
    dry_run: bool
    counts: dict[str, int]
    analyses: list[str]
    runs: list[str]
    batches: list[str]
    models: list[str]
    blobs: list[str]


class DeletionPublic(BaseModel):
    """One entry of the deletion log."""

    model_config = ConfigDict(from_attributes=True)
    kind: str
    object_id: str
    sha256: str | None
    actor: str
    reason: str
    deleted_at: UtcDatetime  # SQLite keeps naive datetimes: always sent with its UTC offset


class DeletionsPublic(BaseModel):
    """A page of the deletion log, newest first."""

    data: list[DeletionPublic]
    count: int


def _prune(settings: Settings, store: BlobStore, principal: Principal, body: PruneRequest) -> PruneResult:
    try:
        age = retention.parse_age(body.older_than)
    except ValueError as exc:
        raise ApiError(422, str(exc), code="validation_error") from None
    with session_factory(settings)() as session:
        done = retention.prune(session, store, age, _actor(principal), principal.project_id, body.dry_run)
    if not done.dry_run:
        for kind, n in done.counts().items():
            DELETED.labels(kind, "prune").inc(n)
    return PruneResult(
        cutoff=done.cutoff,
        dry_run=done.dry_run,
        counts=done.counts(),
        analyses=done.analyses,
        runs=done.runs,
        batches=done.batches,
        models=done.models,
        blobs=done.blobs,
    )


@router.post("/admin/prune", response_model=PruneResult, tags=["admin"], responses=error_responses(422))
async def prune(body: PruneRequest, principal: AdminAccess, settings: SettingsDep, store: StoreDep) -> PruneResult:
    """Delete this project's finished analyses, idle runs and unreferenced uploads older than `older_than`."""
    return await run_in_threadpool(_prune, settings, store, principal, body)


def _log_page(settings: Settings, project_id: str, limit: int, offset: int) -> DeletionsPublic:
    with session_factory(settings)() as session:
        where = [Deletion.project_id == project_id]
        page = rows.page(session, Deletion, where, [Deletion.deleted_at.desc(), Deletion.id], limit, offset)
        return DeletionsPublic(data=[DeletionPublic.model_validate(r) for r in page.rows], count=page.count)


@router.get("/admin/deletions", response_model=DeletionsPublic, tags=["admin"])
async def deletions(principal: AdminAccess, settings: SettingsDep, page: Paging) -> DeletionsPublic:
    """The deletion log of this project: who (key id) deleted what, when, and why (request or prune)."""
    return await run_in_threadpool(_log_page, settings, principal.project_id, page.limit, page.offset)
