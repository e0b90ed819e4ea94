"""Shared route helpers: project-scoped lookups (another project's id is a 404) and upload intake."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from gradhealth.store import analyses, rows
from gradhealth.store.blobs import BlobStore
from gradhealth.store.keys import Principal
from gradhealth.store.models import Analysis, Base, Batch, ModelPackage
from gradhealth.store.registry import UnknownModel, resolve
from gradhealth.store.rows import Upload as UploadRow
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .errors import ApiError
from .uploads import Upload

Row = TypeVar("Row", bound=Base)


def get_owned(session: Session, table: type[Row], object_id: str, principal: Principal, what: str) -> Row:
    """The row if it exists in the caller's project; otherwise 404, never 403 (ids don't leak)."""
    row = rows.owned(session, table, object_id, principal.project_id)
    if row is None:
        raise ApiError(404, f"no {what} with id {object_id!r} in this project")
    return row


def finished_report_json(session: Session, analysis_id: str, principal: Principal) -> str:
    """The report of a succeeded analysis of this project: 404 if not ours, 409 (saying why) otherwise."""
    row = get_owned(session, Analysis, analysis_id, principal, "analysis")
    if row.status == "failed":
        raise ApiError(409, f"the analysis failed, so there is no report: {row.error_message}", code="analysis_failed")
    body = analyses.report_json(session, analysis_id) if row.status == "succeeded" else None
    if body is None:
        raise ApiError(
            409,
            f"the analysis is {row.status} ({row.phase}, {row.fraction:.0%}); "
            "poll GET /v1/analyses/{id} until status is succeeded",
            code="not_ready",
            headers={"Retry-After": "1"},
        )
    return body


def resolve_model(session: Session, principal: Principal, ref: str) -> ModelPackage:
    """A model id, `name:latest` or `name:N` of the caller's project; 404 with what to do otherwise."""
    try:
        return resolve(session, principal.project_id, ref)
    except UnknownModel as exc:
        raise ApiError(404, str(exc)) from None


def require_stored(store: BlobStore, model: ModelPackage, batches: Sequence[Batch]) -> None:
    """Before queueing: every input's bytes are in blob storage (409 naming the one that is not)."""
    for what, row in (("model", model), *(("batch", b) for b in batches)):
        if not store.exists(row.sha256):
            raise ApiError(
                409,
                f"the stored file of {what} {row.id!r} (sha256 {row.sha256}) is missing from blob storage, "
                f"so it cannot be analysed; upload the {what} again and use the id it returns",
                code="blob_missing",
                detail={f"{what}_id": row.id, "sha256": row.sha256},
            )


def accept_upload(
    session: Session,
    store: BlobStore,
    principal: Principal,
    upload: Upload,
    table: type[UploadRow],
    make_row: Callable[[], UploadRow],
) -> tuple[UploadRow, bool]:
    """Deduplicate by sha256 within the project, else validate (make_row), commit blob and row.

    Returns (row, created). make_row raises InputError for a bad file; the staged bytes are then
    discarded and nothing is stored.
    """
    sha = upload.staged.sha256
    upload.staged.close()
    existing = rows.by_sha256(session, table, principal.project_id, sha)
    if existing is not None:
        if store.exists(sha):
            store.discard(upload.staged)
        else:  # its bytes were deleted from storage (retention): the same upload puts them back
            store.commit(upload.staged)
        return existing, False
    try:
        row = make_row()
    except BaseException:
        store.discard(upload.staged)
        raise
    store.commit(upload.staged)
    try:
        rows.save(session, row)
    except IntegrityError:  # a concurrent identical upload won the race
        session.rollback()
        existing = rows.by_sha256(session, table, principal.project_id, sha)
        if existing is None:
            raise
        return existing, False
    return row, True
