"""Audits: scheduled re-analysis of a model reference, run history with comparisons, webhook log."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from gradhealth.store import audits
from gradhealth.store.models import ACTIVE, Audit, Batch, utcnow

from ..audit_schemas import (
    AuditCreate,
    AuditCreated,
    AuditPublic,
    AuditRunPublic,
    AuditRunsPublic,
    AuditsPublic,
    AuditUpdate,
    DeliveriesPublic,
    DeliveryPublic,
    TickRequest,
)
from ..deps import AdminAccess, ReadAccess, SendDep, SessionDep, SettingsDep, WriteAccess
from ..errors import ApiError
from ..openapi import error_responses
from ..paging import LogPaging, Paging
from ..resources import get_owned, resolve_model
from ..webhook_urls import checked_webhook_url

router = APIRouter(prefix="/audits", tags=["audits"])


def to_public(row: Audit) -> AuditPublic:
    """The API view of an audit, with its next scheduled time (None while paused)."""
    base = row.last_slot or row.created_at
    return AuditPublic(
        id=row.id,
        name=row.name,
        schedule=row.schedule,
        model=row.model_ref,
        batch_id=row.batch_id,
        options=json.loads(row.options),
        webhook_url=row.webhook_url,
        notify_on=row.notify_on,  # type: ignore[arg-type]
        status=row.status,  # type: ignore[arg-type]
        last_slot=row.last_slot,
        next_run_at=audits.next_slot(row.schedule, base) if row.status == ACTIVE else None,
        created_at=row.created_at,
    )


@router.post("", status_code=201, response_model=AuditCreated, responses=error_responses(404))
def create_audit(
    body: AuditCreate, response: Response, principal: WriteAccess, session: SessionDep, settings: SettingsDep
) -> AuditCreated:
    """Create an audit; the response carries the webhook signing secret, shown only this once."""
    webhook_url = checked_webhook_url(settings, body.webhook_url)
    model = resolve_model(session, principal, body.model)
    get_owned(session, Batch, body.batch_id, principal, "batch")
    if model.returns_loss is False and body.options.loss is None:
        raise ApiError(
            422,
            'this model returns outputs, not a loss: name it in options (e.g. "options": {"loss": "cross_entropy"})',
            code="loss_required",
        )
    row = audits.create_audit(
        session,
        principal.project_id,
        name=body.name,
        schedule=body.schedule,
        model_ref=body.model,
        batch_id=body.batch_id,
        options=json.dumps(body.options.options().model_dump(mode="json", exclude_none=True)),
        webhook_url=webhook_url,
        notify_on=body.notify_on,
    )
    response.headers["Location"] = f"/v1/audits/{row.id}"
    return AuditCreated(**to_public(row).model_dump(), webhook_secret=row.webhook_secret)


@router.get("", response_model=AuditsPublic)
def list_audits(principal: ReadAccess, session: SessionDep, page: Paging) -> AuditsPublic:
    """This project's audits, newest first."""
    found = audits.list_page(session, principal.project_id, page.limit, page.offset)
    return AuditsPublic(data=[to_public(r) for r in found.rows], count=found.count)


@router.get("/{audit_id}", response_model=AuditPublic)
def read_audit(audit_id: str, principal: ReadAccess, session: SessionDep) -> AuditPublic:
    """One audit of this project."""
    return to_public(get_owned(session, Audit, audit_id, principal, "audit"))


@router.patch("/{audit_id}", response_model=AuditPublic)
def update_audit(audit_id: str, body: AuditUpdate, principal: WriteAccess, session: SessionDep) -> AuditPublic:
    """Pause or resume; resuming skips the slots missed while paused (the next run is the next slot)."""
    row = get_owned(session, Audit, audit_id, principal, "audit")
    return to_public(audits.set_status(session, row, body.status, utcnow()))


@router.post("/{audit_id}/run", status_code=202, response_model=AuditRunPublic, responses=error_responses(409))
def run_audit(
    audit_id: str, principal: WriteAccess, session: SessionDep, settings: SettingsDep, send: SendDep
) -> AuditRunPublic:
    """Run the audit now, outside its schedule (works while paused too)."""
    row = get_owned(session, Audit, audit_id, principal, "audit")
    run_id = audits.start_run(settings, row.id, utcnow(), audits.MANUAL, send)
    if run_id is None:
        raise ApiError(409, "a run of this audit started at the same instant; retry")
    return AuditRunPublic.model_validate(audits.get_run(session, run_id))


@router.get("/{audit_id}/history", response_model=AuditRunsPublic)
def audit_history(audit_id: str, principal: ReadAccess, session: SessionDep, page: Paging) -> AuditRunsPublic:
    """The audit's runs, newest first: analysis, health, and the comparison with the run before."""
    get_owned(session, Audit, audit_id, principal, "audit")
    found = audits.history_page(session, audit_id, page.limit, page.offset)
    return AuditRunsPublic(data=[AuditRunPublic.model_validate(r) for r in found.rows], count=found.count)


@router.get("/{audit_id}/deliveries", response_model=DeliveriesPublic)
def audit_deliveries(audit_id: str, principal: ReadAccess, session: SessionDep, page: LogPaging) -> DeliveriesPublic:
    """Every webhook delivery attempt of this audit, newest first."""
    get_owned(session, Audit, audit_id, principal, "audit")
    found = audits.deliveries_page(session, audit_id, page.limit, page.offset)
    return DeliveriesPublic(data=[DeliveryPublic.model_validate(r) for r in found.rows], count=found.count)


@router.post("/tick", response_model=list[str])
async def tick(body: TickRequest, principal: AdminAccess, settings: SettingsDep, send: SendDep) -> list[str]:
    """Admin: run this project's scheduler once as of `now` (default: the present); returns started run ids."""
    now = (body.now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    scope = {"project_id": principal.project_id, "audit_id": body.audit_id}
    return await run_in_threadpool(audits.tick, settings, now, send, **scope)
