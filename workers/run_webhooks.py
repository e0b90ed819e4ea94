"""A training run's webhook: called once, when the run first gets a finding of severity error or worse."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from gradhealth.report import Finding, severity_at_least
from gradhealth.store import runs
from gradhealth.store.models import RunWebhookDelivery, TrainingRun, WebhookDelivery
from gradhealth.store.runs import NOTIFY_AT
from gradhealth.store.settings import Settings
from sqlalchemy.orm import Session

from .webhooks import attempt, finding_payload


def payload(run: TrainingRun, settings: Settings) -> dict[str, Any]:
    """What the receiver needs: which run, the bad findings with their steps and layers, what to do."""
    findings = [Finding.model_validate(f) for f in json.loads(run.findings)]
    bad = [f for f in findings if severity_at_least(f.severity, NOTIFY_AT)]
    return {
        "event": "run.unhealthy",
        "run": {"id": run.id, "name": run.name, "last_step": run.last_step, "steps": run.num_steps},
        "health": run.health,
        "report_url": settings.public_link(f"/v1/runs/{run.id}/report"),
        "findings": [finding_payload(f) for f in bad],
    }


def _run_body(
    settings: Settings, session: Session, row: WebhookDelivery | RunWebhookDelivery
) -> tuple[bytes, str] | None:
    """The run's notification and its secret; None when the run has no webhook any more."""
    run = runs.get_run(session, row.run_id)
    if run is None or not run.webhook_url:
        return None
    return json.dumps(payload(run, settings), separators=(",", ":")).encode(), run.webhook_secret


def deliver_run(settings: Settings, delivery_id: str) -> str:
    """One attempt at a run's notification (a row of run_webhook_deliveries)."""
    return attempt(settings, RunWebhookDelivery, delivery_id, partial(_run_body, settings))
