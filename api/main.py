"""Build the FastAPI app: settings, error handlers, metrics, routers. Run with `gradhealth api`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from gradhealth.store.blobs import sweep_partial_uploads
from gradhealth.store.celery_app import Send, sender
from gradhealth.store.db import migrate
from gradhealth.store.settings import Settings, get_settings

from gradhealth import __version__

from .body_limit import BodyLimitMiddleware
from .deps import KeyCache
from .docs_pages import install_docs_pages
from .errors import install_error_handlers
from .log_batch_doc import LogBatchBody
from .metrics import MetricsMiddleware, mark_dead
from .openapi import document_errors
from .reports import RenderedCache
from .routes import analyses, audits, batches, compare, deletions, health, models, run_compare, runs

API_PREFIX = "/v1"
api_router = APIRouter()
for module in (models, batches, analyses, compare, audits, run_compare, runs, deletions):  # /runs/compare first
    api_router.include_router(module.router)


def _operation_id(route: APIRoute) -> str:
    """Clean operation ids (`analyses-create_analysis`) for generated clients."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(settings: Settings | None = None, send: Send | None = None) -> FastAPI:
    """The app for these settings (default: from the environment); migrates the database on start.

    `send(task, id)` hands tasks on (default: Celery via enqueue()); tests pass an in-process runner.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(migrate, settings)
        await run_in_threadpool(sweep_partial_uploads, settings)
        yield
        mark_dead()

    app = FastAPI(
        title="gradhealth",
        version=__version__,
        summary="Gradient-health diagnostics for PyTorch models",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url=None,  # served from the package by install_docs_pages (no CDN)
        redoc_url=None,
    )

    async def app_settings() -> Settings:
        """Async, so FastAPI resolves it without a thread-pool hop on every request."""
        return settings

    app.dependency_overrides[get_settings] = app_settings
    app.state.key_cache = KeyCache()  # per app, so a test's app starts empty and can be inspected
    app.state.rendered = RenderedCache()
    app.state.send = send or sender(settings)
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, prefix=API_PREFIX)
    app.add_middleware(BodyLimitMiddleware, settings=settings)  # outermost: refuse before anything reads
    app.include_router(api_router, prefix=API_PREFIX)
    app.include_router(health.router)
    install_docs_pages(app)
    document_errors(app, LogBatchBody)
    return app
