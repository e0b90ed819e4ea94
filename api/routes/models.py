"""Model packages: upload (streamed, size-limited, safety-checked, deduplicated) and read."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from gradhealth.store.db import session_factory
from gradhealth.store.models import ModelPackage

from ..deps import ReadAccess, SessionDep, SettingsDep, StoreDep, WriteAccess
from ..metrics import UPLOADED_BYTES
from ..resources import accept_upload, get_owned
from ..schemas import ModelPublic
from ..uploads import UPLOAD_OPENAPI, receive_upload
from ..validation import inspect_model

router = APIRouter(prefix="/models", tags=["models"])


@router.post(
    "",
    status_code=201,
    response_model=ModelPublic,
    openapi_extra=UPLOAD_OPENAPI,
    responses={200: {"description": "Already uploaded to this project (same sha256)", "model": ModelPublic}},
)
async def upload_model(
    request: Request, response: Response, principal: WriteAccess, settings: SettingsDep, store: StoreDep
) -> ModelPublic:
    """Upload a .pt2 (torch.export) or TorchScript package; unsafe archives are refused (422)."""
    upload = await receive_upload(request, store, settings.max_upload_bytes)

    def make_row() -> ModelPackage:
        facts = inspect_model(upload.staged.path, upload.filename)
        return ModelPackage(
            project_id=principal.project_id,
            sha256=upload.staged.sha256,
            size_bytes=upload.staged.size,
            format=facts.format,
            num_parameters=facts.num_parameters,
            returns_loss=facts.returns_loss,
            filename=upload.filename,
        )

    def intake() -> tuple[ModelPackage, bool]:
        with session_factory(settings)() as session:
            return accept_upload(session, store, principal, upload, ModelPackage, make_row)

    row, created = await run_in_threadpool(intake)
    response.status_code = 201 if created else 200
    if created:
        UPLOADED_BYTES.labels("model").inc(row.size_bytes)
    return ModelPublic.model_validate(row)


@router.get("/{model_id}", response_model=ModelPublic)
def read_model(model_id: str, principal: ReadAccess, session: SessionDep) -> ModelPublic:
    """One model package of this project."""
    return ModelPublic.model_validate(get_owned(session, ModelPackage, model_id, principal, "model"))
