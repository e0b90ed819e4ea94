"""Analyses: create (202, queued for a worker), read status and progress, read the report."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from gradhealth.store import analyses
from gradhealth.store.db import session_factory
from gradhealth.store.keys import Principal
from gradhealth.store.models import Analysis
from gradhealth.store.settings import Settings
from gradhealth.store.task_names import RUN_ANALYSIS

from ..batch_set import owned_batches
from ..deps import ReadAccess, SendDep, SessionDep, SettingsDep, StoreDep, WriteAccess
from ..errors import ApiError
from ..idempotency import IdempotencyKey, create_idempotent
from ..openapi import error_responses
from ..paging import Paging
from ..reports import MEDIA_TYPES, RenderedCache, ReportFormat, render
from ..resources import finished_report_json, get_owned, require_stored, resolve_model
from ..schemas import AnalysesPublic, AnalysisCreate, AnalysisError, AnalysisPublic, Progress

PATH = "/v1/analyses"
router = APIRouter(prefix="/analyses", tags=["analyses"])


def to_public(row: Analysis) -> AnalysisPublic:
    """The API view of an analysis row."""
    return AnalysisPublic(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]
        model_id=row.model_id,
        batch_id=row.batch_id,
        batch_ids=json.loads(row.batch_ids) if row.batch_ids else [row.batch_id],
        progress=Progress(phase=row.phase, fraction=row.fraction),
        error=AnalysisError(code=row.error_code or "failed", message=row.error_message or "")
        if row.status == "failed"
        else None,
        health=row.health,
        attempts=row.attempts,
        note=row.note,
        run_seconds=row.run_seconds,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        report_url=f"/v1/analyses/{row.id}/report" if row.status == "succeeded" else None,
    )


@router.post("", status_code=202, response_model=AnalysisPublic, responses=error_responses(404, 409, 503))
def create_analysis(
    body: AnalysisCreate,
    response: Response,
    principal: WriteAccess,
    session: SessionDep,
    send: SendDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> AnalysisPublic:
    """Queue an analysis of an uploaded model on one batch or several (batch_ids); poll GET /v1/analyses/{id}.

    Several batches are analysed one by one and merged: variability across them is measured.
    Honours Idempotency-Key (see the header): a retry returns the first analysis, queued once.
    """
    model = resolve_model(session, principal, body.model_id)
    batches = owned_batches(session, principal, body.batches())
    require_stored(store, model, batches)
    batch_ids = [b.id for b in batches]
    if model.returns_loss is False and body.loss is None:
        raise ApiError(
            422,
            'this model returns outputs, not a loss: name the loss (e.g. "loss": "cross_entropy"), '
            "or build the package with gradhealth.package(model, loss, ...)",
            code="loss_required",
        )
    request = {
        "model_id": model.id,
        "batch_id": batch_ids[0],
        "batch_ids": json.dumps(batch_ids) if len(batch_ids) > 1 else None,  # one listed batch is batch_id
        "options": json.dumps(body.options().model_dump(mode="json", exclude_none=True)),
    }
    row, created = create_idempotent(session, principal, response, idempotency_key, Analysis, PATH, request)
    if created:  # committed first: the worker must find the row the message names
        send(RUN_ANALYSIS, row.id)
    return to_public(row)


@router.get("", response_model=AnalysesPublic)
def list_analyses(
    principal: ReadAccess,
    session: SessionDep,
    page: Paging,
    status: Literal["queued", "running", "succeeded", "failed"] | None = None,
) -> AnalysesPublic:
    """This project's analyses, newest first."""
    found = analyses.list_page(session, principal.project_id, status, page.limit, page.offset)
    return AnalysesPublic(data=[to_public(r) for r in found.rows], count=found.count)


@router.get("/{analysis_id}", response_model=AnalysisPublic)
def read_analysis(analysis_id: str, principal: ReadAccess, session: SessionDep) -> AnalysisPublic:
    """Status, progress {phase, fraction} and, when failed, the error."""
    return to_public(get_owned(session, Analysis, analysis_id, principal, "analysis"))


def _load_report(settings: Settings, analysis_id: str, principal: Principal) -> str:
    with session_factory(settings)() as session:
        return finished_report_json(session, analysis_id, principal)


@router.get(
    "/{analysis_id}/report",
    responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}, **error_responses(409)},
)
async def read_report(
    request: Request, analysis_id: str, principal: ReadAccess, settings: SettingsDep, format: ReportFormat = "json"
) -> Response:
    """The report as JSON (the schema), Markdown, self-contained HTML or JUnit XML."""
    rendered: RenderedCache = request.app.state.rendered
    cached = rendered.get(analysis_id, format)
    if cached is None or cached[0] != principal.project_id:
        body = await run_in_threadpool(_load_report, settings, analysis_id, principal)
        data = body.encode() if format == "json" else await run_in_threadpool(render, body, format)
        rendered.put(analysis_id, format, principal.project_id, data)
    else:
        data = cached[1]
    return Response(data, media_type=MEDIA_TYPES[format])
