"""A request-body limit on every endpoint: pure ASGI, checked from Content-Length and counted while streaming.

Uploads get GRADHEALTH_MAX_UPLOAD_BYTES (plus multipart framing), log batches
GRADHEALTH_MAX_LOG_BATCH_BYTES, everything else GRADHEALTH_MAX_JSON_BYTES. A body over its limit is
answered 413 in the API's error shape before the app buffers or parses it.
"""

from __future__ import annotations

import re
from typing import Any

from gradhealth.store.settings import Settings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response
from .uploads import DRAIN_CAP, MULTIPART_SLACK

UPLOAD_PATHS = re.compile(r"/v1/(models|batches)/?\Z")
LOG_PATHS = re.compile(r"/v1/runs/[^/]+/logs/?\Z")


class BodyTooLarge(Exception):
    """Raised into the app from receive() when the body passes its limit; the middleware answers 413."""


def body_limit(settings: Settings, method: str, path: str) -> tuple[int, str]:
    """The most bytes this request's body may hold, and the setting that raises it."""
    if method == "POST" and UPLOAD_PATHS.match(path):
        return settings.max_upload_bytes + MULTIPART_SLACK, "GRADHEALTH_MAX_UPLOAD_BYTES"
    if method == "POST" and LOG_PATHS.match(path):
        return settings.max_log_batch_bytes, "GRADHEALTH_MAX_LOG_BATCH_BYTES"
    return settings.max_json_bytes, "GRADHEALTH_MAX_JSON_BYTES"


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _expects_continue(scope: Scope) -> bool:
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in scope.get("headers", ()))


class BodyLimitMiddleware:
    """Answer 413 for a body over its route's limit: declared up front, or counted as chunks arrive."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = body_limit(self.settings, scope["method"], scope["path"])
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            if not _expects_continue(scope):
                await _drain(receive, DRAIN_CAP)
            await _too_large(scope, send, limit, setting)
            return
        received, over, started, more = 0, False, False, True

        async def counted_receive() -> Message:
            nonlocal received, over, more
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = message.get("more_body", False)
                if received > limit:
                    over = True
                    raise BodyTooLarge(f"the request body passed {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:  # whatever the app answers to a body cut short, the client gets the 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:  # BodyTooLarge, or whatever the app made of it
            if not over:
                raise
        if over and not started:
            if more:
                await _drain(receive, DRAIN_CAP)
            await _too_large(scope, send, limit, setting)


async def _drain(receive: Receive, budget: int) -> None:
    """Read (and drop) what the client is still sending, up to budget, so it sees the 413, not a reset."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _too_large(scope: Scope, send: Send, limit: int, setting: str) -> None:
    response = error_response(
        413,
        "payload_too_large",
        f"the request body is larger than this endpoint's limit of {limit} bytes ({limit / 2**20:.1f} MiB); "
        f"send less, or raise {setting} on the server",
        {"limit": limit},
        {"Connection": "close"},
    )
    await response(scope, _no_receive, send)


async def _no_receive() -> Any:
    return {"type": "http.disconnect"}
