"""Celery tasks: ids in, database rows out; every task is safe to run twice."""

from __future__ import annotations

import logging
from functools import partial

from celery import Task
from gradhealth.store import analyses
from gradhealth.store.celery_app import enqueue, get_celery
from gradhealth.store.models import FAILED, SUCCEEDED
from gradhealth.store.settings import get_settings
from gradhealth.store.task_names import DELIVER_RUN_WEBHOOK, DELIVER_WEBHOOK, RUN_ANALYSIS, SWEEP

from . import audit_runs, run_webhooks, webhooks
from .runner import execute_analysis

log = logging.getLogger(__name__)
app = get_celery()


@app.task(name=RUN_ANALYSIS, bind=True, acks_late=True, ignore_result=True)
def run_analysis(self: Task, analysis_id: str) -> str:
    """Analyse one model on one batch; a redelivered message finds the row finished and returns."""
    settings = get_settings()
    outcome = execute_analysis(settings, analysis_id, worker=self.request.hostname or "worker")
    if outcome in (SUCCEEDED, FAILED):
        audit_runs.finalize_for_analysis(settings, analysis_id, partial(enqueue, settings=settings))
    return outcome


@app.task(name=SWEEP, acks_late=True, ignore_result=True)
def sweep() -> dict[str, list[str]]:
    """Re-enqueue analyses left queued (message lost) or running with a dead worker."""
    settings = get_settings()
    result = analyses.sweep(settings, partial(enqueue, settings=settings))
    return {"requeued_lost": result.requeued_lost, "requeued_stale": result.requeued_stale, "failed": result.failed}


@app.task(name=DELIVER_WEBHOOK, acks_late=True, ignore_result=True)
def deliver_webhook(delivery_id: str) -> str:
    """One signed attempt of an audit run's notification; a retry is a later outbox row, never a countdown."""
    return webhooks.deliver(get_settings(), delivery_id)


@app.task(name=DELIVER_RUN_WEBHOOK, acks_late=True, ignore_result=True)
def deliver_run_webhook(delivery_id: str) -> str:
    """One signed attempt telling a training run's webhook that the run went bad."""
    return run_webhooks.deliver_run(get_settings(), delivery_id)
