"""Audit scheduling: which cron slot is due, and starting a run exactly once per (audit, slot)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from croniter import croniter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .celery_app import Send
from .db import session_factory
from .models import ACTIVE, FAILED, RUNNING, Analysis, Audit, AuditRun, WebhookDelivery, utcnow
from .outbox import new_secret
from .registry import UnknownModel, resolve
from .rows import Page, page, save
from .settings import Settings
from .task_names import RUN_ANALYSIS

log = logging.getLogger(__name__)
SCHEDULED, MANUAL = "schedule", "manual"


def valid_schedule(schedule: str) -> str | None:
    """None if `schedule` is a 5-field cron expression, else what is wrong with it."""
    fields = schedule.split()
    if len(fields) != 5:
        return f"a cron schedule has 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
    if not croniter.is_valid(schedule):
        return f"{schedule!r} is not a valid cron expression (e.g. '0 3 * * *' is 03:00 UTC daily)"
    return None


def next_slot(schedule: str, after: datetime) -> datetime:
    """The first schedule time strictly after `after` (naive UTC)."""
    return croniter(schedule, after).get_next(datetime)


def latest_slot(schedule: str, now: datetime) -> datetime:
    """The newest schedule time at or before `now`."""
    return croniter(schedule, now + timedelta(seconds=1)).get_prev(datetime)


def due_slot(audit: Audit, now: datetime) -> datetime | None:
    """The slot to run now, if one is due; missed older slots collapse into the newest one."""
    if next_slot(audit.schedule, audit.last_slot or audit.created_at) > now:
        return None
    return latest_slot(audit.schedule, now)


def start_run(settings: Settings, audit_id: str, slot: datetime, trigger: str, send: Send) -> str | None:
    """Create the run (and its analysis) for this slot; None when another ticker already did."""
    session = session_factory(settings)()
    try:
        audit = session.get(Audit, audit_id)
        if audit is None:
            return None
        run = AuditRun(audit_id=audit.id, slot=slot, trigger=trigger, status=RUNNING)
        try:
            model = resolve(session, audit.project_id, audit.model_ref)
        except UnknownModel as exc:
            run.status, run.error_message, run.finished_at = FAILED, str(exc), utcnow()
        else:
            analysis = Analysis(
                project_id=audit.project_id, model_id=model.id, batch_id=audit.batch_id, options=audit.options
            )
            session.add(analysis)
            session.flush()
            run.model_id, run.analysis_id = model.id, analysis.id
        session.add(run)
        if trigger == SCHEDULED and (audit.last_slot is None or slot > audit.last_slot):
            audit.last_slot = slot
        try:
            session.commit()
        except IntegrityError:  # (audit_id, slot) exists: this slot already ran
            session.rollback()
            return None
        if run.analysis_id is not None:
            send(RUN_ANALYSIS, run.analysis_id)
        return run.id
    finally:
        session.close()


def tick(
    settings: Settings, now: datetime, send: Send, project_id: str | None = None, audit_id: str | None = None
) -> list[str]:
    """Start every due audit's run for its slot; safe to call from many processes at once."""
    with session_factory(settings)() as session:
        query = select(Audit).where(Audit.status == ACTIVE)
        if project_id is not None:
            query = query.where(Audit.project_id == project_id)
        if audit_id is not None:
            query = query.where(Audit.id == audit_id)
        audits = session.scalars(query).all()
    started = []
    for audit in audits:
        slot = due_slot(audit, now)
        if slot is not None and (run_id := start_run(settings, audit.id, slot, SCHEDULED, send)) is not None:
            log.info("audit %s: started run %s for slot %s", audit.id, run_id, slot.isoformat())
            started.append(run_id)
    return started


def create_audit(
    session: Session,
    project_id: str,
    *,
    name: str,
    schedule: str,
    model_ref: str,
    batch_id: str,
    options: str,
    webhook_url: str | None,
    notify_on: str,
) -> Audit:
    """A new active audit with its own webhook signing secret, committed."""
    audit = Audit(
        project_id=project_id,
        name=name,
        schedule=schedule,
        model_ref=model_ref,
        batch_id=batch_id,
        options=options,
        webhook_url=webhook_url,
        webhook_secret=new_secret(),
        notify_on=notify_on,
        status=ACTIVE,
    )
    return save(session, audit)


def set_status(session: Session, audit: Audit, status: str, now: datetime) -> Audit:
    """Pause or resume; resuming skips the slots missed while paused, so the next run is the next slot."""
    if status == ACTIVE and audit.status != ACTIVE:
        audit.last_slot = max(audit.last_slot or audit.created_at, latest_slot(audit.schedule, now))
    audit.status = status
    session.commit()
    return audit


def get_run(session: Session, run_id: str) -> AuditRun | None:
    """One audit run by id (the caller has checked that its audit is the caller's)."""
    return session.get(AuditRun, run_id)


def list_page(session: Session, project_id: str, limit: int, offset: int) -> Page[Audit]:
    """This project's audits, newest first."""
    return page(session, Audit, [Audit.project_id == project_id], [Audit.created_at.desc()], limit, offset)


def history_page(session: Session, audit_id: str, limit: int, offset: int) -> Page[AuditRun]:
    """One audit's runs, newest first."""
    return page(session, AuditRun, [AuditRun.audit_id == audit_id], [AuditRun.created_at.desc()], limit, offset)


def deliveries_page(session: Session, audit_id: str, limit: int, offset: int) -> Page[WebhookDelivery]:
    """One audit's webhook delivery attempts, newest first (a retry before the attempt it retries)."""
    order = [WebhookDelivery.created_at.desc(), WebhookDelivery.attempt.desc()]
    return page(session, WebhookDelivery, [WebhookDelivery.audit_id == audit_id], order, limit, offset)
