"""The app's /v1 operations, read from the app itself, so a new route is covered by the sweeping tests."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

UNKNOWN = "unknown-0000"


def _filled(path: str) -> str:
    return re.sub(r"\{[^}]+\}", UNKNOWN, path)


def _api_routes(app: FastAPI) -> list[tuple[str, APIRoute]]:
    """(full path, route) of every /v1 route, included routers resolved."""
    return [
        (context.path, context.route)
        for context in iter_route_contexts(app.router.routes)
        if isinstance(context.route, APIRoute) and context.path.startswith("/v1/")
    ]


def operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every /v1 operation, path parameters filled with an id no project has."""
    return sorted((method, _filled(path)) for path, route in _api_routes(app) for method in sorted(route.methods or ()))


def lists(app: FastAPI) -> list[str]:
    """Every GET /v1 route that answers a page ({data, count}), its ids filled in."""
    return sorted(
        _filled(path)
        for path, route in _api_routes(app)
        if "GET" in (route.methods or ())
        and {"data", "count"} <= set(getattr(route.response_model, "model_fields", {}))
    )
