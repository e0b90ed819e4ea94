"""Prometheus metrics: request counts and latency by route template, analyses by status."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REGISTRY = CollectorRegistry()
REQUESTS = Counter("gradhealth_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY)
LATENCY = Histogram(
    "gradhealth_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
UPLOADED_BYTES = Counter("gradhealth_uploaded_bytes_total", "Bytes accepted", ["kind"], registry=REGISTRY)
ANALYSES = Gauge("gradhealth_analyses", "Analyses by status (from the database)", ["status"], registry=REGISTRY)


class MetricsMiddleware:
    """Pure ASGI (no body buffering, so streamed uploads stay streamed)."""

    def __init__(self, app: ASGIApp, prefix: str = "") -> None:
        self.app = app
        self.prefix = prefix  # routers report paths relative to where they are included

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            if self.prefix and scope["path"].startswith(self.prefix + "/") and not template.startswith(self.prefix):
                template = self.prefix + template
            REQUESTS.labels(scope["method"], template, str(status[0])).inc()
            LATENCY.labels(scope["method"], template).observe(time.perf_counter() - start)
