"""Analyses: create (202, queued for a worker), read status and progress, read the report."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from gradhealth.store.analyses import RUN_ANALYSIS
from gradhealth.store.celery_app import enqueue
from gradhealth.store.db import session_factory
from gradhealth.store.keys import Principal
from gradhealth.store.models import Analysis, Batch
from gradhealth.store.settings import Settings
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..deps import ReadAccess, SessionDep, SettingsDep, WriteAccess
from ..errors import ApiError
from ..openapi import error_responses
from ..paging import Offset
from ..reports import MEDIA_TYPES, RenderedCache, ReportFormat, render
from ..resources import finished_report_json, get_owned, resolve_model
from ..schemas import AnalysesPublic, AnalysisCreate, AnalysisError, AnalysisPublic, Progress

router = APIRouter(prefix="/analyses", tags=["analyses"])


def to_public(row: Analysis) -> AnalysisPublic:
    """The API view of an analysis row."""
    return AnalysisPublic(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]
        model_id=row.model_id,
        batch_id=row.batch_id,
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


def _replay(
    session: Session, principal: Principal, key: str, body: AnalysisCreate, model_id: str, options: str
) -> Analysis | None:
    """The analysis an earlier POST with this Idempotency-Key created, if the request is the same."""
    row = session.scalars(
        select(Analysis).where(Analysis.project_id == principal.project_id, Analysis.idempotency_key == key)
    ).first()
    if row is not None and (row.model_id, row.batch_id, row.options) != (model_id, body.batch_id, options):
        raise ApiError(
            422,
            "this Idempotency-Key was already used for a different analysis request; use a new key per request",
            code="idempotency_key_reused",
        )
    return row


@router.post("", status_code=202, response_model=AnalysisPublic, responses=error_responses(404))
def create_analysis(
    body: AnalysisCreate,
    response: Response,
    principal: WriteAccess,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: str | None = Header(default=None, max_length=128),
) -> AnalysisPublic:
    """Queue an analysis of an uploaded model on an uploaded batch; poll GET /v1/analyses/{id}.

    With an Idempotency-Key header, repeating the same request returns the first analysis.
    """
    model = resolve_model(session, principal, body.model_id)
    get_owned(session, Batch, body.batch_id, principal, "batch")
    if model.returns_loss is False and body.loss is None:
        raise ApiError(
            422,
            'this model returns outputs, not a loss: name the loss (e.g. "loss": "cross_entropy"), '
            "or build the package with gradhealth.package(model, loss, ...)",
            code="loss_required",
        )
    options = json.dumps(body.options().model_dump(mode="json", exclude_none=True))
    existing = _replay(session, principal, idempotency_key, body, model.id, options) if idempotency_key else None
    if existing is not None:
        response.headers["Location"] = f"/v1/analyses/{existing.id}"
        return to_public(existing)
    row = Analysis(
        project_id=principal.project_id,
        model_id=model.id,
        batch_id=body.batch_id,
        options=options,
        idempotency_key=idempotency_key,
    )
    session.add(row)
    try:
        session.commit()  # commit first: the worker must find the row the message names
    except IntegrityError:  # a concurrent retry with the same key won the race
        session.rollback()
        winner = _replay(session, principal, idempotency_key or "", body, model.id, options)
        if winner is None:
            raise
        return to_public(winner)
    enqueue(RUN_ANALYSIS, row.id, settings)
    response.headers["Location"] = f"/v1/analyses/{row.id}"
    return to_public(row)


@router.get("", response_model=AnalysesPublic)
def list_analyses(
    principal: ReadAccess,
    session: SessionDep,
    status: Literal["queued", "running", "succeeded", "failed"] | None = None,
    limit: int = Query(default=50, ge=1, le=500),
    offset: Offset = 0,
) -> AnalysesPublic:
    """This project's analyses, newest first."""
    where = [Analysis.project_id == principal.project_id]
    if status:
        where.append(Analysis.status == status)
    count = session.scalar(select(func.count()).select_from(Analysis).where(*where)) or 0
    rows = session.scalars(
        select(Analysis).where(*where).order_by(Analysis.created_at.desc()).limit(limit).offset(offset)
    ).all()
    return AnalysesPublic(data=[to_public(r) for r in rows], count=count)


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
