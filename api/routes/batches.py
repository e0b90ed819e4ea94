"""Batches: upload a safetensors file (checked exactly as the worker will read it) and read it."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from gradhealth.store.db import session_factory
from gradhealth.store.models import Batch

from ..deps import ReadAccess, SessionDep, SettingsDep, StoreDep, WriteAccess
from ..metrics import UPLOADED_BYTES
from ..resources import accept_upload, get_owned
from ..schemas import BatchPublic
from ..uploads import UPLOAD_OPENAPI, receive_upload
from ..validation import inspect_batch

router = APIRouter(prefix="/batches", tags=["batches"])


@router.post(
    "",
    status_code=201,
    response_model=BatchPublic,
    openapi_extra=UPLOAD_OPENAPI,
    responses={200: {"description": "Already uploaded to this project (same sha256)", "model": BatchPublic}},
)
async def upload_batch(
    request: Request, response: Response, principal: WriteAccess, settings: SettingsDep, store: StoreDep
) -> BatchPublic:
    """Upload a batch: safetensors with `inputs` (or `inputs.0`, ...) and `targets`."""
    upload = await receive_upload(request, store, settings.max_upload_bytes)

    def make_row() -> Batch:
        shapes = inspect_batch(upload.staged.path, upload.filename)
        return Batch(
            project_id=principal.project_id,
            sha256=upload.staged.sha256,
            size_bytes=upload.staged.size,
            shapes=json.dumps(shapes),
            filename=upload.filename,
        )

    def intake() -> tuple[Batch, bool]:
        with session_factory(settings)() as session:
            return accept_upload(session, store, principal, upload, Batch, make_row)

    row, created = await run_in_threadpool(intake)
    response.status_code = 201 if created else 200
    if created:
        UPLOADED_BYTES.labels("batch").inc(row.size_bytes)
    return BatchPublic.model_validate(row)


@router.get("/{batch_id}", response_model=BatchPublic)
def read_batch(batch_id: str, principal: ReadAccess, session: SessionDep) -> BatchPublic:
    """One batch of this project."""
    return BatchPublic.model_validate(get_owned(session, Batch, batch_id, principal, "batch"))
