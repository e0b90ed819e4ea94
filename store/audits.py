"""Audit scheduling: which cron slot is due, and starting a run exactly once per (audit, slot)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from croniter import croniter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .analyses import RUN_ANALYSIS
from .db import session_factory
from .models import ACTIVE, FAILED, RUNNING, Analysis, Audit, AuditRun, utcnow
from .registry import UnknownModel, resolve
from .settings import Settings

log = logging.getLogger(__name__)
Send = Callable[[str, str], object]
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
