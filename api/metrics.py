"""Prometheus metrics: request counts and latency by route template, analyses by status.

Under `gradhealth api --workers N` every process writes its samples to files in
PROMETHEUS_MULTIPROC_DIR (set before prometheus_client is imported) and a scrape of any process
sums them all (prometheus_client's multiprocess mode); with one process the registry is read as is.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
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
ANALYSES = Gauge(
    "gradhealth_analyses",
    "Analyses by status (from the database)",
    ["status"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",  # every process reads the same table: the latest scrape's count is the count
)
FAILED_BY_CODE = Gauge(
    "gradhealth_analyses_failed",
    "Failed analyses by error code (from the database; out_of_memory = the child hit its memory limit)",
    ["code"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
WEBHOOK_FAILURES = Gauge(
    "gradhealth_webhook_failures",
    "Failed webhook delivery attempts by category (from the database)",
    ["category"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
QUEUE_LENGTH = Gauge(
    "gradhealth_queue_length",
    "Messages waiting in a broker queue (Redis broker)",
    ["queue"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
DELETED = Counter("gradhealth_deleted_total", "Resources deleted", ["kind", "reason"], registry=REGISTRY)


def multiprocess_dir() -> str | None:
    """The shared sample folder when several API processes serve /metrics."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> bytes:
    """Prometheus text for this process, or the sum over every API process in multiprocess mode."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def mark_dead() -> None:
    """At shutdown: drop this process's live-gauge files so a scrape stops counting it."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())


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
