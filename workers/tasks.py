"""Celery tasks: ids in, database rows out; every task is safe to run twice."""

from __future__ import annotations

import logging
from functools import partial

from celery import Task
from gradhealth.store import analyses
from gradhealth.store.celery_app import enqueue, get_celery
from gradhealth.store.settings import get_settings

from .runner import execute_analysis

log = logging.getLogger(__name__)
app = get_celery()


@app.task(name=analyses.RUN_ANALYSIS, bind=True, acks_late=True, ignore_result=True)
def run_analysis(self: Task, analysis_id: str) -> str:
    """Analyse one model on one batch; a redelivered message finds the row finished and returns."""
    return execute_analysis(get_settings(), analysis_id, worker=self.request.hostname or "worker")


@app.task(name="gradhealth.sweep", acks_late=True, ignore_result=True)
def sweep() -> dict[str, list[str]]:
    """Re-enqueue analyses left queued (message lost) or running with a dead worker."""
    settings = get_settings()
    result = analyses.sweep(settings, partial(enqueue, settings=settings))
    return {"requeued_lost": result.requeued_lost, "requeued_stale": result.requeued_stale, "failed": result.failed}
