"""Every route's OpenAPI entry lists every error status it can return, with the one error schema.

Clients and the schemathesis fuzzer rely on the document: an undocumented status is a bug. The
statuses that follow from a route's shape (authentication, path ids, parameters, a body) are added
into the generated document for every operation; route-specific ones (409, a 404 for ids in the body)
are declared on the route with error_responses().
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from pydantic import BaseModel
from starlette.routing import BaseRoute

from .deps import current_principal

ERROR_REF = "#/components/schemas/ErrorBody"
DESCRIPTIONS = {
    400: "Malformed body (not parseable JSON, multipart or gzip)",
    401: "Missing, invalid or revoked API key",
    403: "The API key lacks the scope this operation needs",
    404: "No such object in this project",
    409: "Conflicts with the object's state (e.g. not finished yet)",
    413: "Body larger than this server's limit",
    415: "Unsupported Content-Type or Content-Encoding",
    422: "Well-formed but invalid request",
    503: "A dependency (database or broker) does not answer",
}


class ErrorDetail(BaseModel):
    """What went wrong: a stable code, a message that says what to do, and machine-readable detail."""

    code: str
    message: str
    detail: Any


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def _response(status: int) -> dict[str, Any]:
    return {"description": DESCRIPTIONS[status], "content": {"application/json": {"schema": {"$ref": ERROR_REF}}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the statuses a route returns beyond those its shape implies."""
    return {status: _response(status) for status in statuses}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def implied_statuses(route: RouteContext) -> set[int]:
    """The error statuses a route's shape implies: auth, path ids, parameters, a (JSON or raw) body."""
    dependant, statuses = route.dependant, set()
    if current_principal in set(_calls(dependant)):
        statuses |= {401, 403}
    if dependant.path_params:
        statuses.add(404)
    if dependant.path_params or dependant.query_params or dependant.header_params:
        statuses.add(422)
    if route.body_field is not None:
        statuses |= {400, 413, 422}
    if "requestBody" in (route.openapi_extra or {}):  # bodies the route reads itself: uploads, log batches
        statuses |= {400, 413, 415, 422}
    return statuses


def _add_errors(doc: dict[str, Any], routes: list[BaseRoute]) -> None:
    for route in iter_route_contexts(routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        operations = doc["paths"].get(route.path_format, {})
        for method in route.methods or ():
            responses = operations.get(method.lower(), {}).get("responses")
            if responses is None:
                continue  # HEAD, which the document leaves out
            for status in sorted(implied_statuses(route)):
                described = responses.get(str(status), {}).get("content", {}).get("application/json", {})
                if described.get("schema") != {"$ref": ERROR_REF}:  # FastAPI's own 422 shape is not ours
                    responses[str(status)] = _response(status)


def document_errors(app: FastAPI, *models: type[BaseModel]) -> None:
    """Patch the generated document: implied error responses on every operation, ErrorBody and models."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            _add_errors(doc, app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            for model in (ErrorBody, *models):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]
