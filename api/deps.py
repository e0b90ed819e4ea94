"""Dependencies as named Annotated aliases: settings, session, blob store, and the caller's key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from gradhealth.store.blobs import BlobStore, blob_store
from gradhealth.store.celery_app import Send
from gradhealth.store.db import session_factory
from gradhealth.store.keys import Principal, authenticate, hash_key
from gradhealth.store.settings import Settings, get_settings
from sqlalchemy.orm import Session

from .errors import ApiError

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """A session per request; routes commit explicitly."""
    session = session_factory(settings)()
    try:
        yield session
    finally:
        session.close()


def get_blob_store(settings: SettingsDep) -> BlobStore:
    """The configured blob store."""
    return blob_store(settings)


async def get_send(request: Request) -> Send:
    """How this app hands tasks on: Celery by name by default, an in-process runner in the fast test tier."""
    send: Send = request.app.state.send
    return send


SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[BlobStore, Depends(get_blob_store)]
SendDep = Annotated[Send, Depends(get_send)]


@dataclass
class KeyCache:
    """Resolved keys (digest -> expiry, principal) and the lookups in flight: one per app, not per process."""

    entries: dict[str, tuple[float, Principal]] = field(default_factory=dict)
    inflight: dict[str, asyncio.Future[Principal | None]] = field(default_factory=dict)
    max_entries: int = 10_000


def _presented_key(request: Request) -> str:
    """The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return key
    raise ApiError(
        401,
        "missing API key: send `Authorization: Bearer <key>` (or `X-API-Key: <key>`); "
        "`gradhealth admin create-key PROJECT` makes one",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _lookup(settings: Settings, key: str) -> Principal | None:
    with session_factory(settings)() as session:
        return authenticate(session, key)


async def _lookup_once(cache: KeyCache, settings: Settings, key: str, digest: str) -> Principal | None:
    """One database lookup per key at a time: concurrent requests share it (no stampede)."""
    pending = cache.inflight.get(digest)
    if pending is None:
        pending = asyncio.ensure_future(run_in_threadpool(_lookup, settings, key))
        cache.inflight[digest] = pending
        pending.add_done_callback(lambda _: cache.inflight.pop(digest, None))
    return await asyncio.shield(pending)


async def current_principal(request: Request, settings: SettingsDep) -> Principal:
    """Resolve the key to its project; a short cache keeps hot read paths off the database."""
    key = _presented_key(request)
    digest = hash_key(key)
    now = time.monotonic()
    cache: KeyCache = request.app.state.key_cache
    cached = cache.entries.get(digest)
    if cached is not None and cached[0] > now:
        return cached[1]
    principal = await _lookup_once(cache, settings, key, digest)
    if principal is None:
        raise ApiError(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    if settings.key_cache_seconds > 0:
        if len(cache.entries) >= cache.max_entries:
            cache.entries.clear()
        cache.entries[digest] = (now + settings.key_cache_seconds, principal)
    return principal


def require(scope: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits keys holding `scope` (or a broader one)."""

    async def dependency(request: Request, principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.allows(scope):
            have = ", ".join(sorted(principal.scopes))
            raise ApiError(
                403,
                f"this API key has scope(s) [{have}]; {request.method} {request.url.path} needs "
                f"'{scope}'. Create a key with `gradhealth admin create-key PROJECT --scope {scope}`",
            )
        return principal

    return dependency


ReadAccess = Annotated[Principal, Depends(require("read"))]
WriteAccess = Annotated[Principal, Depends(require("write"))]
AdminAccess = Annotated[Principal, Depends(require("admin"))]
