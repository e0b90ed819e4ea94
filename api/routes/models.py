"""Model packages: upload (streamed, size-limited, safety-checked, deduplicated, optionally named) and read."""

from __future__ import annotations

import json

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from gradhealth.store.db import session_factory
from gradhealth.store.models import ModelPackage
from gradhealth.store.registry import insert_next_version, list_page, name_existing, next_version, valid_name
from sqlalchemy.exc import IntegrityError

from ..deps import ReadAccess, SessionDep, SettingsDep, StoreDep, WriteAccess
from ..errors import ApiError
from ..metrics import UPLOADED_BYTES
from ..openapi import error_responses
from ..paging import Paging
from ..resources import accept_upload, get_owned, resolve_model
from ..schemas import ModelPublic, ModelsPublic
from ..uploads import UPLOAD_OPENAPI, Upload, receive_upload
from ..validation import inspect_model

router = APIRouter(prefix="/models", tags=["models"])


def _registry_fields(upload: Upload, name: str | None, tags: str | None) -> tuple[str | None, str | None]:
    """Name and tags from the query or the form; tags as a JSON list, or None."""
    name = (name or upload.fields.get("name") or "").strip() or None
    raw_tags = tags if tags is not None else upload.fields.get("tags")
    if name is not None and not valid_name(name):
        raise ApiError(
            422, f"bad model name {name!r}: use letters, digits, '.', '_', '-', '/' (no ':'), at most 200 characters"
        )
    tag_list = sorted({t.strip() for t in (raw_tags or "").split(",") if t.strip()})
    if tag_list and name is None:
        raise ApiError(422, "tags need a model name: add name=... to tag a model version")
    return name, json.dumps(tag_list) if tag_list else None


def _too_many(name: str | None) -> ApiError:
    return ApiError(409, f"too many concurrent uploads under the name {name!r}; retry")


@router.post(
    "",
    status_code=201,
    response_model=ModelPublic,
    openapi_extra=UPLOAD_OPENAPI,
    responses={
        200: {"description": "Already uploaded to this project (same sha256)", "model": ModelPublic},
        **error_responses(409),
    },
)
async def upload_model(
    request: Request,
    response: Response,
    principal: WriteAccess,
    settings: SettingsDep,
    store: StoreDep,
    name: str | None = Query(default=None, description="register as the next version of this name"),
    tags: str | None = Query(default=None, description="comma-separated tags for a named version"),
) -> ModelPublic:
    """Upload a .pt2 (torch.export) package; unsafe archives and TorchScript are refused (422).

    With `name` (query or form field) the upload becomes version max+1 of that name; the same bytes
    again return the existing version (200).
    """
    upload = await receive_upload(request, store, settings.max_upload_bytes)
    try:
        model_name, tag_json = _registry_fields(upload, name, tags)
    except ApiError:
        store.discard(upload.staged)
        raise

    def intake() -> tuple[ModelPackage, bool]:
        facts = None
        with session_factory(settings)() as session:

            def make_row() -> ModelPackage:
                nonlocal facts
                facts = facts or inspect_model(upload.staged.path, upload.filename)
                version = next_version(session, principal.project_id, model_name) if model_name else None
                return ModelPackage(
                    project_id=principal.project_id,
                    sha256=upload.staged.sha256,
                    size_bytes=upload.staged.size,
                    format=facts.format,
                    num_parameters=facts.num_parameters,
                    returns_loss=facts.returns_loss,
                    filename=upload.filename,
                    name=model_name,
                    version=version,
                    tags=tag_json,
                )

            try:
                row, created = accept_upload(session, store, principal, upload, ModelPackage, make_row)
            except IntegrityError:  # the blob is stored; another upload took this version number
                session.rollback()
                inserted = insert_next_version(session, make_row)
                if inserted is None:
                    raise _too_many(model_name) from None
                return inserted
            if not created and model_name and row.name is None:
                named = name_existing(session, row, model_name, tag_json)
                if named is None:
                    raise _too_many(model_name)
                row = named
            elif not created and model_name and row.name != model_name:
                raise ApiError(
                    409,
                    f"these bytes are already registered as {row.name}:{row.version} (id {row.id}); "
                    "a package has one name: reference that version, or change the package",
                    code="registered_under_another_name",
                )
            return row, created

    row, created = await run_in_threadpool(intake)
    response.status_code = 201 if created else 200
    if created:
        UPLOADED_BYTES.labels("model").inc(row.size_bytes)
    return ModelPublic.model_validate(row)


@router.get("", response_model=ModelsPublic)
def list_models(
    principal: ReadAccess,
    session: SessionDep,
    page: Paging,
    name: str | None = Query(default=None, description="only the versions of this name, newest first"),
) -> ModelsPublic:
    """This project's models (newest first), or the version history of one name."""
    found = list_page(session, principal.project_id, name, page.limit, page.offset)
    return ModelsPublic(data=[ModelPublic.model_validate(r) for r in found.rows], count=found.count)


@router.get("/{model_id}", response_model=ModelPublic)
def read_model(model_id: str, principal: ReadAccess, session: SessionDep) -> ModelPublic:
    """One model package of this project: by id, `name:latest` or `name:N`."""
    if ":" not in model_id:
        return ModelPublic.model_validate(get_owned(session, ModelPackage, model_id, principal, "model"))
    return ModelPublic.model_validate(resolve_model(session, principal, model_id))
