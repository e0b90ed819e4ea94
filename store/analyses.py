"""Analysis state changes as compare-and-set updates, so racing workers and sweeps stay consistent."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from gradhealth.report import Report
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import session_scope
from .models import (
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    Analysis,
    Batch,
    ModelPackage,
    StoredReport,
    utcnow,
)
from .rows import Page, page
from .settings import Settings
from .task_names import RUN_ANALYSIS


@dataclass(frozen=True)
class Claim:
    """A worker's exclusive right to run one attempt; the token guards every later write."""

    analysis_id: str
    token: str
    attempt: int
    model_key: str
    batch_key: str
    model_format: str
    options: str
    batch_keys: tuple[str, ...] = ()  # every batch's blob key, in order (batch_key first)


def _fail_exhausted(session: Session, row: Analysis) -> None:
    """Stop retrying an analysis that keeps losing its worker."""
    session.execute(
        update(Analysis)
        .where(Analysis.id == row.id, Analysis.status == row.status, Analysis.attempts == row.attempts)
        .values(
            status=FAILED,
            phase=FAILED,
            error_code="worker_lost",
            error_message=(
                f"the analysis was interrupted {row.attempts} times (its worker stopped or lost "
                "contact); giving up. Check the worker logs, or retry with a smaller model or batch."
            ),
            lease_token=None,
            finished_at=utcnow(),
        )
    )


def claim(settings: Settings, analysis_id: str, worker: str) -> Claim | None:
    """Start an attempt unless the analysis is finished, gone, or alive on another worker."""
    now = utcnow()
    with session_scope(settings) as session:
        row = session.get(Analysis, analysis_id)
        if row is None or row.status in TERMINAL:
            return None
        lease_cutoff = now - timedelta(seconds=settings.lease_seconds)
        if row.status == RUNNING and row.heartbeat_at is not None and row.heartbeat_at >= lease_cutoff:
            return None
        if row.attempts >= settings.max_attempts:
            _fail_exhausted(session, row)
            return None
        token, attempt = secrets.token_hex(16), row.attempts + 1
        won = session.execute(
            update(Analysis)
            .where(Analysis.id == row.id, Analysis.status == row.status, Analysis.attempts == row.attempts)
            .values(
                status=RUNNING,
                phase="starting",
                fraction=0.0,
                attempts=attempt,
                worker=worker[:255],
                lease_token=token,
                started_at=now,
                heartbeat_at=now,
                error_code=None,
                error_message=None,
            )
        ).rowcount
        if won != 1:
            return None
        model = session.get(ModelPackage, row.model_id)
        batches = [session.get(Batch, b) for b in (json.loads(row.batch_ids) if row.batch_ids else [row.batch_id])]
        assert model is not None and all(b is not None for b in batches)  # foreign keys, checked at creation
        keys = tuple(b.sha256 for b in batches if b is not None)
        return Claim(row.id, token, attempt, model.sha256, keys[0], model.format, row.options, keys)


def heartbeat(settings: Settings, claim_: Claim, phase: str | None, fraction: float | None) -> bool:
    """Record progress and extend the lease; False means another attempt owns the analysis now."""
    values: dict[str, object] = {"heartbeat_at": utcnow()}
    if phase is not None:
        values["phase"] = phase[:32]
    if fraction is not None:
        values["fraction"] = round(max(0.0, min(1.0, float(fraction))), 3)  # 0.405, not 0.40499999999999997
    with session_scope(settings) as session:
        return session.execute(_owned(claim_).values(**values)).rowcount == 1


def _owned(claim_: Claim):  # type: ignore[no-untyped-def]
    return update(Analysis).where(
        Analysis.id == claim_.analysis_id,
        Analysis.lease_token == claim_.token,
        Analysis.status == RUNNING,
    )


def complete(
    settings: Settings, claim_: Claim, report_json: str, health: str, run_seconds: float, note: str | None
) -> bool:
    """Write the one report and mark success atomically; False if this attempt lost its lease."""
    with session_scope(settings) as session:
        done = session.execute(
            _owned(claim_).values(
                status=SUCCEEDED,
                phase="done",
                fraction=1.0,
                health=health,
                run_seconds=run_seconds,
                note=note,
                lease_token=None,
                finished_at=utcnow(),
            )
        ).rowcount
        if done != 1:
            return False
        session.add(StoredReport(analysis_id=claim_.analysis_id, body=report_json))
        try:
            session.flush()
        except IntegrityError:
            session.rollback()
            return False
    return True


def fail(settings: Settings, claim_: Claim, code: str, message: str) -> bool:
    """Mark this attempt's analysis failed with a message the user can act on."""
    with session_scope(settings) as session:
        return (
            session.execute(
                _owned(claim_).values(
                    status=FAILED,
                    phase=FAILED,
                    error_code=code[:64],
                    error_message=message[:4000],
                    lease_token=None,
                    finished_at=utcnow(),
                )
            ).rowcount
            == 1
        )


@dataclass
class SweepResult:
    """What one recovery sweep did."""

    requeued_lost: list[str]
    requeued_stale: list[str]
    failed: list[str]


def sweep(settings: Settings, enqueue: Callable[[str, str], object]) -> SweepResult:
    """Re-enqueue analyses whose message was lost or whose worker died; the database decides."""
    now = utcnow()
    result = SweepResult([], [], [])
    lease_cutoff = now - timedelta(seconds=settings.lease_seconds)
    queue_cutoff = now - timedelta(seconds=settings.requeue_after_seconds)
    with session_scope(settings) as session:
        dead = session.execute(
            select(Analysis.id, Analysis.attempts).where(
                Analysis.status == RUNNING, Analysis.heartbeat_at < lease_cutoff
            )
        ).all()
        lost = session.scalars(
            select(Analysis.id).where(Analysis.status == QUEUED, Analysis.enqueued_at < queue_cutoff)
        ).all()
    for analysis_id, attempts in dead:
        with session_scope(settings) as session:
            row = session.get(Analysis, analysis_id)
            if row is None or row.status != RUNNING or row.attempts != attempts:
                continue
            if attempts >= settings.max_attempts:
                _fail_exhausted(session, row)
                result.failed.append(analysis_id)
                continue
            moved = session.execute(
                update(Analysis)
                .where(Analysis.id == analysis_id, Analysis.status == RUNNING, Analysis.attempts == attempts)
                .values(status=QUEUED, phase=QUEUED, fraction=0.0, lease_token=None, enqueued_at=now)
            ).rowcount
        if moved == 1:
            enqueue(RUN_ANALYSIS, analysis_id)
            result.requeued_stale.append(analysis_id)
    for analysis_id in lost:
        with session_scope(settings) as session:
            moved = session.execute(
                update(Analysis)
                .where(Analysis.id == analysis_id, Analysis.status == QUEUED, Analysis.enqueued_at < queue_cutoff)
                .values(enqueued_at=now)
            ).rowcount
        if moved == 1:
            enqueue(RUN_ANALYSIS, analysis_id)
            result.requeued_lost.append(analysis_id)
    return result


def report_json(session: Session, analysis_id: str | None) -> str | None:
    """The stored report of an analysis, as written once by complete(); None when there is none."""
    stored = session.get(StoredReport, analysis_id) if analysis_id else None
    return stored.body if stored is not None else None


def load_report(session: Session, analysis_id: str | None) -> Report | None:
    """The stored report parsed into the report schema; None when there is none."""
    body = report_json(session, analysis_id)
    return Report.model_validate_json(body) if body is not None else None


def count_by_status(session: Session) -> dict[str, int]:
    """How many analyses are in each state, across projects: the /metrics gauges."""
    return dict(session.execute(select(Analysis.status, func.count()).group_by(Analysis.status)).tuples().all())


def list_page(session: Session, project_id: str, status: str | None, limit: int, offset: int) -> Page[Analysis]:
    """This project's analyses, newest first, optionally only those in one state."""
    where = [Analysis.project_id == project_id] + ([Analysis.status == status] if status else [])
    return page(session, Analysis, where, [Analysis.created_at.desc()], limit, offset)
