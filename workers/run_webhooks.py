"""A training run's webhook: called once, when the run first gets a finding of severity error or worse."""

from __future__ import annotations

import json
from typing import Any

from gradhealth.diagnostics.schema import Finding, severity_at_least
from gradhealth.store.db import session_scope
from gradhealth.store.models import RunWebhookDelivery, TrainingRun
from gradhealth.store.runs import DELIVER_RUN_WEBHOOK, NOTIFY_AT
from gradhealth.store.settings import Settings
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .webhooks import attempt, finding_payload


def payload(run: TrainingRun) -> dict[str, Any]:
    """What the receiver needs: which run, the bad findings with their steps and layers, what to do."""
    findings = [Finding.model_validate(f) for f in json.loads(run.findings)]
    bad = [f for f in findings if severity_at_least(f.severity, NOTIFY_AT)]
    return {
        "event": "run.unhealthy",
        "run": {"id": run.id, "name": run.name, "last_step": run.last_step, "steps": run.num_steps},
        "health": run.health,
        "report_url": f"/v1/runs/{run.id}/report",
        "findings": [finding_payload(f) for f in bad],
    }


def _claim_attempt(settings: Settings, run_id: str) -> tuple[RunWebhookDelivery, bytes, str] | None:
    """Log the next attempt (unique per run and number) and build the body; None if done or given up."""
    with session_scope(settings) as session:
        run = session.get(TrainingRun, run_id)
        if run is None or not run.webhook_url:
            return None
        where = RunWebhookDelivery.run_id == run_id
        done = session.scalar(select(func.count()).where(where, RunWebhookDelivery.ok))
        attempts = session.scalar(select(func.count()).where(where)) or 0
        if done or attempts >= settings.webhook_max_attempts:
            return None
        body = json.dumps(payload(run), separators=(",", ":")).encode()
        row = RunWebhookDelivery(run_id=run.id, attempt=attempts + 1, url=run.webhook_url)
        session.add(row)
        try:
            session.flush()
        except IntegrityError:  # a redelivered task is making this attempt already
            session.rollback()
            return None
        secret = run.webhook_secret
    return row, body, secret


def deliver_run(settings: Settings, run_id: str) -> str:
    """Make one delivery attempt; on failure schedule the next after backoff."""
    return attempt(settings, _claim_attempt(settings, run_id), RunWebhookDelivery, DELIVER_RUN_WEBHOOK, run_id)
