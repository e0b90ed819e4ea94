"""Finishing an audit run: compare its report with the previous run's and decide whether to notify."""

from __future__ import annotations

import logging
from collections.abc import Callable

from gradhealth.report import SEVERITY_ORDER, Comparison, Finding, compare_reports
from gradhealth.report import Report as EngineReport
from gradhealth.store import analyses
from gradhealth.store.db import session_scope
from gradhealth.store.models import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    Analysis,
    Audit,
    AuditRun,
    WebhookDelivery,
    new_id,
    utcnow,
)
from gradhealth.store.outbox import first_due, hand_over
from gradhealth.store.settings import Settings
from gradhealth.store.task_names import DELIVER_WEBHOOK
from sqlalchemy import select, update
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)


def worse_findings(report: EngineReport, comparison: Comparison | None) -> list[Finding]:
    """Findings that are new or got more severe; with no previous run, every finding is new."""
    if comparison is None:
        return list(report.findings)
    return list(comparison.new) + [c.after for c in comparison.changed if c.worse]


def should_notify(notify_on: str, report: EngineReport, comparison: Comparison | None) -> bool:
    """Always on a regression; with a severity, also on a new or worsened finding at or above it."""
    if comparison is not None and comparison.regressed:
        return True
    if notify_on == "regression":
        return False
    floor = SEVERITY_ORDER[notify_on]
    return any(SEVERITY_ORDER[f.severity] >= floor for f in worse_findings(report, comparison))


def _previous_report(session: Session, run: AuditRun) -> tuple[str, EngineReport] | None:
    """The newest earlier succeeded run of the same audit, and its report."""
    previous = session.scalars(
        select(AuditRun)
        .where(AuditRun.audit_id == run.audit_id, AuditRun.status == SUCCEEDED, AuditRun.created_at < run.created_at)
        .order_by(AuditRun.created_at.desc())
        .limit(1)
    ).first()
    report = analyses.load_report(session, previous.analysis_id) if previous else None
    if previous is None or report is None:
        return None
    return previous.id, report


def finalize(settings: Settings, run_id: str, send: Callable[[str, str], object]) -> bool:
    """Record the outcome of a run whose analysis finished; True when this call recorded it."""
    with session_scope(settings) as session:
        run = session.get(AuditRun, run_id)
        analysis = session.get(Analysis, run.analysis_id) if run and run.analysis_id else None
        if run is None or run.status != RUNNING or analysis is None or analysis.status not in TERMINAL:
            return False
        audit = session.get(Audit, run.audit_id)
        values: dict[str, object] = {"finished_at": utcnow(), "health": analysis.health}
        report = analyses.load_report(session, analysis.id)
        if analysis.status != SUCCEEDED or report is None or audit is None:
            values |= {"status": FAILED, "error_message": analysis.error_message or "the analysis failed"}
        else:
            previous = _previous_report(session, run)
            comparison = compare_reports(report, previous[1]) if previous else None
            values |= {
                "status": SUCCEEDED,
                "previous_run_id": previous[0] if previous else None,
                "regressed": comparison.regressed if comparison else None,
                "comparison": comparison.model_dump_json() if comparison else None,
                "notify": should_notify(audit.notify_on, report, comparison),
            }
        won = session.execute(
            update(AuditRun).where(AuditRun.id == run.id, AuditRun.status == RUNNING).values(**values)
        ).rowcount
        delivery = None
        if won and values.get("notify") and audit is not None and audit.webhook_url:  # outbox: same transaction
            delivery = WebhookDelivery(
                id=new_id(),
                audit_id=audit.id,
                run_id=run.id,
                attempt=1,
                url=audit.webhook_url,
                due_at=first_due(settings),
            )
            session.add(delivery)
    if delivery is not None:
        hand_over(settings, WebhookDelivery, DELIVER_WEBHOOK, delivery.id, send)
    return bool(won)


def finalize_for_analysis(settings: Settings, analysis_id: str, send: Callable[[str, str], object]) -> None:
    """Called after every analysis: finish the audit run it belongs to, if any."""
    with session_scope(settings) as session:
        run_ids = session.scalars(select(AuditRun.id).where(AuditRun.analysis_id == analysis_id)).all()
    for run_id in run_ids:
        finalize(settings, run_id, send)


def finalize_pending(settings: Settings, send: Callable[[str, str], object]) -> None:
    """Recovery: finish runs whose analysis ended while no finalize ran (a worker died in between)."""
    with session_scope(settings) as session:
        run_ids = session.scalars(
            select(AuditRun.id)
            .join(Analysis, Analysis.id == AuditRun.analysis_id)
            .where(AuditRun.status == RUNNING, Analysis.status.in_(TERMINAL))
        ).all()
    for run_id in run_ids:
        finalize(settings, run_id, send)
