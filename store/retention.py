"""Deleting resources and pruning by age: refuse what is still referenced, log who deleted what, drop orphan blobs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, exists, or_, select
from sqlalchemy.orm import Session

from .blobs import BlobStore
from .models import TERMINAL, Analysis, Audit, AuditRun, Batch, Deletion, ModelPackage, TrainingRun, utcnow

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class StillReferenced(Exception):
    """The resource is used by another one; the message names it and what to delete first."""


class NotDeletable(Exception):
    """The resource is in a state that cannot be deleted now (an analysis still queued or running)."""


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '90m', '45s', '2w' -> timedelta; ValueError says what is accepted."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"bad age {text!r}: use a positive whole number and a unit s, m, h, d or w (e.g. 30d)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _log(
    session: Session, project_id: str | None, kind: str, object_id: str, actor: str, reason: str, sha: str | None = None
) -> None:
    session.add(Deletion(project_id=project_id, kind=kind, object_id=object_id, sha256=sha, actor=actor, reason=reason))


def _batch_users(batch: Batch) -> Select[Any]:
    """Analyses that read this batch, as their first batch or one of several."""
    return select(Analysis.id).where(
        Analysis.project_id == batch.project_id,
        or_(Analysis.batch_id == batch.id, Analysis.batch_ids.contains(batch.id)),
    )


def _model_audits(session: Session, model: ModelPackage) -> list[str]:
    """Audits whose model reference resolves to this model now (by id, name:N, or name:latest when newest)."""
    refs = [model.id]
    if model.name is not None and model.version is not None:
        refs.append(f"{model.name}:{model.version}")
        newer = session.scalar(
            select(ModelPackage.id).where(
                ModelPackage.project_id == model.project_id,
                ModelPackage.name == model.name,
                ModelPackage.version > model.version,
            )
        )
        if newer is None:
            refs.append(f"{model.name}:latest")
    query = select(Audit.id).where(Audit.project_id == model.project_id, Audit.model_ref.in_(refs))
    return list(session.scalars(query).all())


def batch_references(session: Session, batch: Batch) -> str | None:
    """Why this batch cannot go, or None when nothing uses it."""
    used = session.scalar(_batch_users(batch).limit(1))
    if used is not None:
        return f"batch {batch.id} is used by analysis {used}; delete the analyses that use it first"
    audit = session.scalar(select(Audit.id).where(Audit.batch_id == batch.id).limit(1))
    if audit is not None:
        return f"batch {batch.id} is used by audit {audit}; delete or change the audit first"
    return None


def model_references(session: Session, model: ModelPackage) -> str | None:
    """Why this model cannot go, or None when nothing uses it."""
    used = session.scalar(select(Analysis.id).where(Analysis.model_id == model.id).limit(1))
    if used is not None:
        return f"model {model.id} is used by analysis {used}; delete the analyses that use it first"
    audits = _model_audits(session, model)
    run = session.scalar(select(AuditRun.id).where(AuditRun.model_id == model.id).limit(1))
    if audits or run is not None:
        which = f"audit {audits[0]}" if audits else f"audit run {run}"
        return f"model {model.id} is referenced by {which}; it stays while the audit needs it"
    return None


def analysis_references(session: Session, analysis: Analysis) -> str | None:
    """Why this analysis cannot go (still queued/running, or part of an audit's history), or None."""
    if analysis.status not in TERMINAL:
        return f"analysis {analysis.id} is {analysis.status}; delete it once it has succeeded or failed"
    run = session.scalar(select(AuditRun.audit_id).where(AuditRun.analysis_id == analysis.id).limit(1))
    if run is not None:
        return f"analysis {analysis.id} is part of the history of audit {run}; it stays with the audit"
    return None


def delete_analysis(session: Session, analysis: Analysis, actor: str, reason: str = "request") -> None:
    """Delete an analysis and its report (the database cascades the report); logged in the same transaction."""
    why = analysis_references(session, analysis)
    if why is not None:
        raise (NotDeletable if analysis.status not in TERMINAL else StillReferenced)(why)
    session.execute(delete(Analysis).where(Analysis.id == analysis.id))
    _log(session, analysis.project_id, "analysis", analysis.id, actor, reason)


def delete_run(session: Session, run: TrainingRun, actor: str, reason: str = "request") -> None:
    """Delete a watched run with its segments, batches and webhook deliveries (cascade)."""
    session.execute(delete(TrainingRun).where(TrainingRun.id == run.id))
    _log(session, run.project_id, "run", run.id, actor, reason)


def delete_upload(session: Session, row: Batch | ModelPackage, actor: str, reason: str = "request") -> str | None:
    """Delete a batch or model row when nothing references it; returns its sha256 if no row holds those bytes now."""
    kind = "batch" if isinstance(row, Batch) else "model"
    why = batch_references(session, row) if isinstance(row, Batch) else model_references(session, row)
    if why is not None:
        raise StillReferenced(why)
    session.execute(delete(type(row)).where(type(row).id == row.id))
    _log(session, row.project_id, kind, row.id, actor, reason, row.sha256)
    return row.sha256 if orphaned(session, [row.sha256]) else None


def orphaned(session: Session, digests: Iterable[str]) -> list[str]:
    """The digests no model or batch row of any project holds (blobs are shared across projects)."""
    out = []
    for sha in sorted(set(digests)):
        held = session.scalar(select(exists().where(ModelPackage.sha256 == sha) | exists().where(Batch.sha256 == sha)))
        if not held:
            out.append(sha)
    return out


def delete_blobs(store: BlobStore, digests: Iterable[str], session: Session, actor: str, reason: str) -> list[str]:
    """Delete blobs after the rows are committed; a digest re-uploaded meanwhile is kept (checked again)."""
    gone = []
    for sha in orphaned(session, digests):
        store.delete(sha)
        _log(session, None, "blob", sha, actor, reason, sha)
        gone.append(sha)
    session.commit()
    return gone


@dataclass
class PruneResult:
    """What a prune deleted (or, in a dry run, would delete), by kind."""

    cutoff: datetime
    dry_run: bool
    analyses: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number deleted per kind."""
        return {k: len(getattr(self, k)) for k in ("analyses", "runs", "batches", "models", "blobs")}


def prune(
    session: Session,
    store: Any,
    older_than: timedelta,
    actor: str,
    project_id: str | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Delete finished analyses, idle runs, and unreferenced batches/models older than the age, then orphan blobs.

    Only what is old and unreferenced goes: queued/running analyses, analyses in an audit's history,
    and uploads still used by a kept analysis or an audit stay. project_id=None prunes every project.
    A dry run does the same deletes in a transaction it rolls back, so it lists exactly what would go.
    """
    result = PruneResult(cutoff=utcnow() - older_than, dry_run=dry_run)

    def scope(table: Any) -> list[Any]:
        return [table.project_id == project_id] if project_id else []

    old_analyses = session.scalars(
        select(Analysis).where(
            *scope(Analysis),
            Analysis.status.in_(TERMINAL),
            Analysis.created_at < result.cutoff,
            ~exists().where(AuditRun.analysis_id == Analysis.id),
        )
    ).all()
    for analysis in old_analyses:
        delete_analysis(session, analysis, actor, "prune")
        result.analyses.append(analysis.id)
    for run in session.scalars(select(TrainingRun).where(*scope(TrainingRun), TrainingRun.updated_at < result.cutoff)):
        delete_run(session, run, actor, "prune")
        result.runs.append(run.id)
    digests: list[str] = []
    candidates: list[Batch | ModelPackage] = [
        *session.scalars(select(Batch).where(*scope(Batch), Batch.created_at < result.cutoff)).all(),
        *session.scalars(select(ModelPackage).where(*scope(ModelPackage), ModelPackage.created_at < result.cutoff)),
    ]
    for row in candidates:
        why = batch_references(session, row) if isinstance(row, Batch) else model_references(session, row)
        if why is None:
            delete_upload(session, row, actor, "prune")
            (result.batches if isinstance(row, Batch) else result.models).append(row.id)
            digests.append(row.sha256)
    session.flush()
    if dry_run:
        result.blobs = orphaned(session, digests)
        session.rollback()
        return result
    session.commit()
    result.blobs = delete_blobs(store, digests, session, actor, "prune")
    return result
