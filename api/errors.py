"""One error shape for every failure: {"error": {"code", "message", "detail"}} with the right status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from gradhealth.diagnostics.errors import InputError
from gradhealth.store.blobs import BlobStoreUnavailable
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raise from routes and dependencies; the handler turns it into the error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.detail = detail
        self.headers = headers


def error_response(
    status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one JSON error body."""
    body = {"error": {"code": code, "message": message, "detail": jsonable_encoder(detail)}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    """'body.loss: unknown loss ...' for the first problem, so the message alone is actionable."""
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
    text = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s), see detail)" if len(errors) > 1 else ""
    return f"{where}: {text}{more}"


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.detail, exc.headers)


async def _input_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    return error_response(422, exc.code, str(exc))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    return error_response(422, "validation_error", _validation_message(errors), errors)


def _allowed_methods(request: Request) -> str:
    """Every method of every route matching the path: Starlette's 405 names only the first route's."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route.methods or ())
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return error_response(exc.status_code, _CODES.get(exc.status_code, "error"), message, None, headers)


async def _storage_error(_: Request, exc: Exception) -> JSONResponse:
    log.warning("blob storage: %s", exc)
    return error_response(503, "storage_unavailable", f"{exc}; try again later", headers={"Retry-After": "5"})


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """The database is down, unreachable or busy (SQLite's lock past its timeout): retryable, not a bug."""
    assert isinstance(exc, OperationalError)
    cause = str(exc.orig).strip().splitlines()[0][:200] if exc.orig is not None else type(exc).__name__
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, cause)
    return error_response(
        503,
        "database_unavailable",
        f"the database is unavailable or busy ({cause}); nothing was changed, try again later",
        headers={"Retry-After": "5"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error; this is a bug, please report it")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; routes never need try/except for error formatting."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(BlobStoreUnavailable, _storage_error)
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
