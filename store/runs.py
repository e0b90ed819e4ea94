"""Ingest a run's log batches: store once per (run, seq), evaluate the run rules incrementally.

Rules run inline, inside the batch's transaction, rather than on a worker queue: an update costs
O(batch) (the evaluator keeps O(layers) state, never rescans), so the report is current the
moment the POST returns, and a batch is never stored without being evaluated or vice versa.
"""

from __future__ import annotations

import json
import threading
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from gradhealth.diagnostics.run_rules import LogChunk, RunEvaluator
from gradhealth.report import Finding, health_of, severity_at_least
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import RunBatch, RunSegment, RunWebhookDelivery, TrainingRun, new_id, utcnow
from .rows import Page, page
from .run_extra_segments import activation_rows, run_activations
from .run_segments import LogBatch, segment_rows

INT64_MAX = 2**63 - 1

NOTIFY_AT = "error"
_LOCKS = [threading.Lock() for _ in range(64)]


def _lock_for(run_id: str) -> threading.Lock:
    """Serialise one run's batches within this process (SQLite has no row locks; PostgreSQL gets FOR UPDATE too)."""
    return _LOCKS[zlib.crc32(run_id.encode()) % len(_LOCKS)]


@dataclass
class IngestResult:
    """What the POST answers, plus whether the run just went bad (time to call its webhook)."""

    stored: bool
    seq: int
    steps: int
    run_steps: int
    health: str
    notify: bool = False
    delivery_id: str | None = None  # the outbox row written with notified_at, when the run just went bad


def layer_names(run: TrainingRun) -> list[str]:
    """The run's layer names in column order."""
    return [layer["name"] for layer in json.loads(run.layers)]


def _chunk(batch: LogBatch, metrics: list[str], num_activations: int = 0) -> LogChunk:
    values = {name: batch.values[index].astype(np.float64) for index, name in enumerate(metrics)}
    acts = activation_rows(batch, num_activations)
    return LogChunk(batch.steps, batch.loss, batch.loss_logged, batch.lr, values, batch.stride, acts)


def _latest(previous: dict[str, list[float | None]], batch: LogBatch, metrics: list[str]) -> dict[str, Any]:
    """Each layer's last measured value of each metric (non-finite kept as None)."""
    merged = dict(previous)
    for index, name in enumerate(metrics):
        values = batch.values[index]  # (n, L)
        measured = ~np.isnan(values)
        last_row = values.shape[0] - 1 - np.argmax(measured[::-1], axis=0)
        picked = values[last_row, np.arange(values.shape[1])]
        old = merged.get(name) or [None] * values.shape[1]
        merged[name] = [
            (float(v) if np.isfinite(v) else None) if seen else prior
            for v, seen, prior in zip(picked.tolist(), measured.any(axis=0).tolist(), old, strict=True)
        ]
    return merged


def _evaluate(run: TrainingRun, batch: LogBatch, metrics: list[str]) -> list[Finding]:
    """Advance the run's rule state by one batch and return the current findings."""
    state = json.loads(run.rule_state) or None
    activations = run_activations(run.config)
    evaluator = RunEvaluator(layer_names(run), state, activations)
    evaluator.update(_chunk(batch, metrics, len(activations)))
    findings = evaluator.findings()  # before the state: a rule failing here is kept in it too
    run.rule_state = json.dumps(evaluator.state(), allow_nan=False)
    return findings


def _record(run: TrainingRun, batch: LogBatch, metrics: list[str]) -> bool:
    """Update counters, findings and health; True when the run first reaches NOTIFY_AT."""
    findings = _evaluate(run, batch, metrics)
    run.findings = json.dumps([f.model_dump(mode="json") for f in findings])
    run.health = health_of(findings)
    if run.last_step is None or int(batch.steps[-1]) > run.last_step:  # a late, older batch is not "latest"
        run.latest = json.dumps(_latest(json.loads(run.latest), batch, metrics), allow_nan=False)
    run.num_steps += batch.num_steps
    run.num_batches += 1
    run.dropped = min(run.dropped + batch.dropped, INT64_MAX)  # a count, saturating, never a BIGINT overflow
    first, last = int(batch.steps[0]), int(batch.steps[-1])
    run.first_step = first if run.first_step is None else min(run.first_step, first)
    run.last_step = last if run.last_step is None else max(run.last_step, last)
    run.updated_at = utcnow()
    if run.notified_at is None and run.webhook_url and any(severity_at_least(f.severity, NOTIFY_AT) for f in findings):
        run.notified_at = utcnow()
        return True
    return False


def ingest(
    session: Session, run_id: str, project_id: str, batch: LogBatch, notify_due: datetime | None = None
) -> IngestResult | None:
    """Store and evaluate one batch exactly once; None when the run is not this project's.

    When the run goes bad its first webhook delivery row (store/outbox.py) is written in this same
    transaction, due at `notify_due` (default now): notified_at is never committed without it.
    """
    with _lock_for(run_id):
        run = session.scalars(
            select(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.project_id == project_id).with_for_update()
        ).one_or_none()
        if run is None:
            return None
        duplicate = IngestResult(False, batch.seq, batch.num_steps, run.num_steps, run.health)
        if session.get(RunBatch, (run_id, batch.seq)) is not None:
            session.rollback()
            return duplicate
        metrics = json.loads(run.metrics)
        session.add(
            RunBatch(
                run_id=run_id,
                seq=batch.seq,
                num_steps=batch.num_steps,
                first_step=int(batch.steps[0]),
                last_step=int(batch.steps[-1]),
                dropped=batch.dropped,
            )
        )
        grad_norm_index = metrics.index("grad_norm") if "grad_norm" in metrics else None
        session.execute(insert(RunSegment), segment_rows(run_id, batch, grad_norm_index))
        notify = _record(run, batch, metrics)
        delivery = None
        if notify:
            delivery = RunWebhookDelivery(id=new_id(), run_id=run_id, attempt=1, url=run.webhook_url)
            delivery.due_at = notify_due or utcnow()
            session.add(delivery)
        try:
            session.commit()
        except IntegrityError:  # another process stored this seq between our check and commit
            session.rollback()
            return duplicate
        delivery_id = delivery.id if delivery else None
        return IngestResult(True, batch.seq, batch.num_steps, run.num_steps, run.health, notify, delivery_id)


def get_run(session: Session, run_id: str) -> TrainingRun | None:
    """One training run by id, whichever project (workers act for every project)."""
    return session.get(TrainingRun, run_id)


def list_page(session: Session, project_id: str, limit: int, offset: int) -> Page[TrainingRun]:
    """This project's runs, most recently updated first."""
    newest = [TrainingRun.updated_at.desc()]
    return page(session, TrainingRun, [TrainingRun.project_id == project_id], newest, limit, offset)


def deliveries_page(session: Session, run_id: str, limit: int, offset: int) -> Page[RunWebhookDelivery]:
    """One run's webhook delivery attempts, newest first (a retry before the attempt it retries)."""
    order = [RunWebhookDelivery.created_at.desc(), RunWebhookDelivery.attempt.desc()]
    return page(session, RunWebhookDelivery, [RunWebhookDelivery.run_id == run_id], order, limit, offset)
