"""Audit-run queries the workers need to finish a run and to build its notification."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import RUNNING, SUCCEEDED, TERMINAL, Analysis, Audit, AuditRun, WebhookDelivery, new_id


def finalize_inputs(session: Session, run_id: str) -> tuple[AuditRun, Analysis, Audit | None] | None:
    """The running run, its finished analysis and its audit; None when there is nothing to finish."""
    run = session.get(AuditRun, run_id)
    analysis = session.get(Analysis, run.analysis_id) if run and run.analysis_id else None
    if run is None or run.status != RUNNING or analysis is None or analysis.status not in TERMINAL:
        return None
    return run, analysis, session.get(Audit, run.audit_id)


def previous_succeeded(session: Session, run: AuditRun) -> AuditRun | None:
    """The newest earlier succeeded run of the same audit: the baseline a run is compared with."""
    return session.scalars(
        select(AuditRun)
        .where(AuditRun.audit_id == run.audit_id, AuditRun.status == SUCCEEDED, AuditRun.created_at < run.created_at)
        .order_by(AuditRun.created_at.desc())
        .limit(1)
    ).first()


def record_outcome(session: Session, run_id: str, values: Mapping[str, object]) -> bool:
    """Write the outcome unless another finalize already did (compare-and-set on status running)."""
    done = session.execute(update(AuditRun).where(AuditRun.id == run_id, AuditRun.status == RUNNING).values(**values))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def add_delivery(session: Session, run: AuditRun, url: str, due: datetime) -> WebhookDelivery:
    """The notification's first delivery row, in the caller's transaction (the outbox's rule)."""
    delivery = WebhookDelivery(id=new_id(), audit_id=run.audit_id, run_id=run.id, attempt=1, url=url, due_at=due)
    session.add(delivery)
    return delivery


def run_ids_for_analysis(session: Session, analysis_id: str) -> list[str]:
    """The audit runs an analysis belongs to (none, for an analysis started by hand)."""
    return list(session.scalars(select(AuditRun.id).where(AuditRun.analysis_id == analysis_id)).all())


def unrecorded_run_ids(session: Session) -> list[str]:
    """Runs still running whose analysis has ended: a worker died between the analysis and its finalize."""
    return list(
        session.scalars(
            select(AuditRun.id)
            .join(Analysis, Analysis.id == AuditRun.analysis_id)
            .where(AuditRun.status == RUNNING, Analysis.status.in_(TERMINAL))
        ).all()
    )


def run_and_audit(session: Session, run_id: str) -> tuple[AuditRun, Audit] | None:
    """An audit run and its audit, for building the run's notification; None when either is gone."""
    run = session.get(AuditRun, run_id)
    audit = session.get(Audit, run.audit_id) if run else None
    return (run, audit) if run is not None and audit is not None else None
