"""Finishing an audit run: compare its report with the previous run's and decide whether to notify."""

from __future__ import annotations

import logging

from gradhealth.report import SEVERITY_ORDER, Comparison, Finding, compare_reports
from gradhealth.report import Report as EngineReport
from gradhealth.store import analyses
from gradhealth.store import audit_runs as audit_store
from gradhealth.store.celery_app import Send
from gradhealth.store.db import session_scope
from gradhealth.store.models import FAILED, SUCCEEDED, Analysis, Audit, AuditRun, WebhookDelivery, utcnow
from gradhealth.store.outbox import first_due, hand_over
from gradhealth.store.settings import Settings
from gradhealth.store.task_names import DELIVER_WEBHOOK
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
    previous = audit_store.previous_succeeded(session, run)
    report = analyses.load_report(session, previous.analysis_id) if previous else None
    if previous is None or report is None:
        return None
    return previous.id, report


def _outcome(session: Session, run: AuditRun, analysis: Analysis, audit: Audit | None) -> dict[str, object]:
    """The run's finished fields: failed with the analysis's error, or succeeded with its comparison."""
    values: dict[str, object] = {"finished_at": utcnow(), "health": analysis.health}
    report = analyses.load_report(session, analysis.id)
    if analysis.status != SUCCEEDED or report is None or audit is None:
        return values | {"status": FAILED, "error_message": analysis.error_message or "the analysis failed"}
    previous = _previous_report(session, run)
    comparison = compare_reports(report, previous[1]) if previous else None
    return values | {
        "status": SUCCEEDED,
        "previous_run_id": previous[0] if previous else None,
        "regressed": comparison.regressed if comparison else None,
        "comparison": comparison.model_dump_json() if comparison else None,
        "notify": should_notify(audit.notify_on, report, comparison),
    }


def finalize(settings: Settings, run_id: str, send: Send) -> bool:
    """Record the outcome of a run whose analysis finished; True when this call recorded it."""
    with session_scope(settings) as session:
        found = audit_store.finalize_inputs(session, run_id)
        if found is None:
            return False
        run, analysis, audit = found
        values = _outcome(session, run, analysis, audit)
        won = audit_store.record_outcome(session, run.id, values)
        delivery = None
        if won and values.get("notify") and audit is not None and audit.webhook_url:  # outbox: same transaction
            delivery = audit_store.add_delivery(session, run, audit.webhook_url, first_due(settings))
    if delivery is not None:
        hand_over(settings, WebhookDelivery, DELIVER_WEBHOOK, delivery.id, send)
    return won


def finalize_for_analysis(settings: Settings, analysis_id: str, send: Send) -> None:
    """Called after every analysis: finish the audit run it belongs to, if any."""
    with session_scope(settings) as session:
        run_ids = audit_store.run_ids_for_analysis(session, analysis_id)
    for run_id in run_ids:
        finalize(settings, run_id, send)


def finalize_pending(settings: Settings, send: Send) -> None:
    """Recovery: finish runs whose analysis ended while no finalize ran (a worker died in between)."""
    with session_scope(settings) as session:
        run_ids = audit_store.unrecorded_run_ids(session)
    for run_id in run_ids:
        finalize(settings, run_id, send)
