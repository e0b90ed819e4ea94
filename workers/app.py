"""The worker's Celery entry point (`celery -A gradhealth.workers.app worker`): tasks and sweeps."""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutdown
from gradhealth.store import analyses, audits
from gradhealth.store.blobs import sweep_downloads
from gradhealth.store.celery_app import enqueue, get_celery
from gradhealth.store.db import migrate
from gradhealth.store.models import utcnow
from gradhealth.store.settings import get_settings

from . import audit_runs, tasks, webhooks  # noqa: F401  (tasks registers the tasks on the app)
from .sandbox import prepare_spare

log = logging.getLogger(__name__)
app = get_celery()
_stop = threading.Event()


def sweep_forever(stop: threading.Event) -> None:
    """Every worker sweeps; the compare-and-set updates make concurrent sweeps harmless."""
    settings = get_settings()
    while not stop.wait(settings.sweep_interval_seconds):
        try:
            result = analyses.sweep(settings, partial(enqueue, settings=settings))
        except Exception:  # the database may be briefly away; try again next round
            log.exception("recovery sweep failed")
            continue
        if result.requeued_lost or result.requeued_stale or result.failed:
            log.warning(
                "recovery sweep: re-enqueued %d lost, %d from dead workers; gave up on %d",
                len(result.requeued_lost),
                len(result.requeued_stale),
                len(result.failed),
            )


def audit_forever(stop: threading.Event) -> None:
    """Every worker ticks; the (audit, slot) unique constraint lets only one start each slot.

    The same tick enqueues due webhook deliveries (the outbox): compare-and-set on the row's due
    time lets one ticker send each, and a retry waits in the database, not in a worker.
    """
    settings = get_settings()
    send = partial(enqueue, settings=settings)
    while not stop.wait(settings.audit_tick_seconds):
        try:
            audits.tick(settings, utcnow(), send)
            audit_runs.finalize_pending(settings, send)
        except Exception:  # the database may be briefly away; try again next round
            log.exception("audit tick failed")
        try:
            webhooks.enqueue_due(settings, send)
        except Exception:
            log.exception("webhook outbox tick failed")


@worker_init.connect
def _migrate(**_: Any) -> None:
    migrate(get_settings())
    removed = sweep_downloads()  # inputs a killed worker had downloaded (S3 blobs) go now
    if removed:
        log.info("removed %d download folder(s) left by stopped workers", removed)


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    if get_settings().warm_sandbox:
        prepare_spare()  # the first analysis should not wait for torch to import
    threading.Thread(target=sweep_forever, args=(_stop,), name="gradhealth-sweeper", daemon=True).start()
    threading.Thread(target=audit_forever, args=(_stop,), name="gradhealth-audits", daemon=True).start()


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _stop.set()
