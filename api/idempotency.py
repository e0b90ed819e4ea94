"""The Idempotency-Key contract, written once: the header every idempotent POST takes, and its answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Header, Response
from gradhealth.store.idempotency import Keyed, KeyReused, create_once
from gradhealth.store.keys import Principal
from sqlalchemy.orm import Session

from .errors import ApiError

REPLAYED_HEADER = "Idempotent-Replayed"
IDEMPOTENCY_DOC = (
    "Optional, at most 128 characters, one per logical request (a UUID is fine). A retry with the same "
    "key and the same body creates nothing new: it answers the resource the first request created, with "
    f"the same status code and Location, plus `{REPLAYED_HEADER}: true`. The same key with a different "
    "body is a 422 `idempotency_key_reused` whose detail names the fields that differ: send a new key "
    "for a new request. Keys are scoped to the project and never expire."
)

IdempotencyKey = Annotated[str | None, Header(max_length=128, description=IDEMPOTENCY_DOC)]


def create_idempotent(
    session: Session,
    principal: Principal,
    response: Response,
    key: str | None,
    table: type[Keyed],
    collection: str,
    request: Mapping[str, object],
    extra: Mapping[str, object] | None = None,
) -> tuple[Keyed, bool]:
    """(row, created) under the contract above; sets Location (collection/id) and, on a replay, the replayed header."""
    try:
        row, created = create_once(session, table, principal.project_id, key, request, extra)
    except KeyReused as exc:
        raise ApiError(
            422,
            f"this Idempotency-Key was already used for a request with a different {', '.join(exc.fields)}; "
            "repeat that request's body exactly to get its result, or send a new key for a new request",
            code="idempotency_key_reused",
            detail={"differs": exc.fields},
        ) from None
    response.headers["Location"] = f"{collection}/{row.id}"
    if not created:
        response.headers[REPLAYED_HEADER] = "true"
    return row, created
