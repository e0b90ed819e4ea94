"""Signed webhook delivery from the outbox: one attempt per due row, retries are later rows the ticker enqueues."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from functools import partial
from typing import Any

import httpx
from gradhealth.report import Comparison, Finding
from gradhealth.report import Report as EngineReport
from gradhealth.store import analyses, audit_runs, outbox
from gradhealth.store import webhook_targets as targets
from gradhealth.store.celery_app import Send
from gradhealth.store.models import Audit, AuditRun, RunWebhookDelivery, WebhookDelivery, utcnow
from gradhealth.store.settings import Settings
from gradhealth.store.task_names import DELIVER_RUN_WEBHOOK, DELIVER_WEBHOOK
from sqlalchemy.orm import Session

from .audit_runs import worse_findings

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Gradhealth-Signature"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value: HMAC-SHA256 over f"{timestamp}.{body}" with the audit's secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def payload(audit: Audit, run: AuditRun, report: EngineReport | None, settings: Settings) -> dict[str, Any]:
    """What the receiver needs: verdict, the layers that got worse, the new findings and what to do."""
    comparison = Comparison.model_validate_json(run.comparison) if run.comparison else None
    findings = worse_findings(report, comparison) if report is not None else []
    worse_layers = [
        {"layer": c.layer, "metric": c.metric, "before": c.before, "after": c.after, "description": c.description}
        for c in (comparison.layer_changes if comparison else [])
        if c.worse
    ]
    return {
        "event": "audit.regression" if run.regressed else "audit.findings",
        "audit": {"id": audit.id, "name": audit.name, "model": audit.model_ref},
        "run": {"id": run.id, "slot": run.slot.isoformat() + "Z", "trigger": run.trigger, "model_id": run.model_id},
        "analysis_id": run.analysis_id,
        "report_url": settings.public_link(f"/v1/analyses/{run.analysis_id}/report"),
        "health": run.health,
        "health_before": comparison.health_before if comparison else None,
        "previous_run_id": run.previous_run_id,
        "regressed": bool(run.regressed),
        "reasons": comparison.reasons if comparison else [],
        "worse_layers": worse_layers,
        "findings": [finding_payload(f) for f in findings],
    }


def finding_payload(f: Finding) -> dict[str, Any]:
    """A finding as a receiver sees it: what, where (layers, steps) and what to do."""
    return {
        "rule": f.rule,
        "severity": f.severity,
        "title": f.title,
        "message": f.message,
        "layers": f.layers,
        "step": f.step,
        "last_step": f.last_step,
        "remediation": [r.model_dump(mode="json") for r in f.remediation],
    }


def _audit_body(
    settings: Settings, session: Session, row: WebhookDelivery | RunWebhookDelivery
) -> tuple[bytes, str] | None:
    """The audit run's notification and the audit's secret; None when the audit has no webhook any more."""
    found = audit_runs.run_and_audit(session, row.run_id)
    if found is None or not found[1].webhook_url:
        return None
    run, audit = found
    report = analyses.load_report(session, run.analysis_id)
    return json.dumps(payload(audit, run, report, settings), separators=(",", ":")).encode(), audit.webhook_secret


def post_signed(
    settings: Settings, url: str, secret: str, body: bytes, delivery_id: str
) -> tuple[int | None, str | None, str | None]:
    """One signed POST to the re-checked address: (status code, category, message), category None on 2xx.

    The URL is resolved and checked again here, not only at creation (DNS rebinding), and the
    message is one of a few fixed sentences: raw connection errors would map internal ports.
    """
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        "X-Gradhealth-Delivery": delivery_id,
        "User-Agent": "gradhealth-webhooks",
    }
    timeout = settings.webhook_timeout_seconds
    try:
        target = targets.check(url, targets.parse_allow(settings.webhook_allow_hosts))
        status = targets.post(target, body, headers, timeout)
    except targets.TargetError as exc:
        return None, exc.category, str(exc)
    except httpx.TimeoutException:
        return None, targets.TIMEOUT, f"the receiver did not answer within {timeout:g} s"
    except httpx.HTTPError:
        return None, targets.CONNECT_FAILED, "could not connect to the receiver, or it closed the connection early"
    if not 200 <= status < 300:
        return status, targets.HTTP_STATUS, f"the receiver answered HTTP {status}"
    return status, None, None


def attempt(settings: Settings, table: outbox.Table, delivery_id: str, build: outbox.Build) -> str:
    """Send one delivery row if this worker wins its claim; the outcome and any retry are written together."""
    claimed = outbox.claim(settings, table, delivery_id, build)
    if claimed is None:
        return "nothing to do"
    started = time.monotonic()
    status, category, error = post_signed(settings, claimed.url, claimed.secret, claimed.body, claimed.id)
    duration_ms = (time.monotonic() - started) * 1000
    retry = category != targets.REFUSED  # asking again will not make the address acceptable
    retry_at = outbox.finish(settings, table, claimed, status, category, error, duration_ms, retry)
    if category is None:
        return "delivered"
    if retry_at is None:
        log.warning("webhook delivery %s: giving up after attempt %d (%s)", claimed.id, claimed.attempt, category)
        return "gave up"
    return f"retry due {retry_at.isoformat()}Z"


def deliver(settings: Settings, delivery_id: str) -> str:
    """One attempt at an audit run's notification (a row of webhook_deliveries)."""
    return attempt(settings, WebhookDelivery, delivery_id, partial(_audit_body, settings))


OUTBOXES: tuple[tuple[outbox.Table, str], ...] = (
    (WebhookDelivery, DELIVER_WEBHOOK),
    (RunWebhookDelivery, DELIVER_RUN_WEBHOOK),
)


def enqueue_due(settings: Settings, send: Send) -> int:
    """Ticker: enqueue every due delivery row; once the broker refuses one, the rest stay due for the next tick."""
    sent = 0
    for table, task in OUTBOXES:
        due = outbox.take_due(settings, table, utcnow())
        for index, (row_id, _) in enumerate(due):
            if send(task, row_id) is False:
                for later_id, _ in due[index:]:
                    outbox.make_due(settings, table, later_id)
                return sent
            sent += 1
    return sent
