"""Signed webhook delivery: one logged attempt per task run, retries re-enqueued with backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx
from gradhealth.diagnostics.schema import Finding
from gradhealth.diagnostics.schema import Report as EngineReport
from gradhealth.sdk.compare import Comparison
from gradhealth.store import webhook_targets as targets
from gradhealth.store.celery_app import enqueue
from gradhealth.store.db import session_scope
from gradhealth.store.models import Audit, AuditRun, StoredReport, WebhookDelivery
from gradhealth.store.settings import Settings
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from .audit_runs import DELIVER_WEBHOOK, worse_findings

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Gradhealth-Signature"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value: HMAC-SHA256 over f"{timestamp}.{body}" with the audit's secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def payload(audit: Audit, run: AuditRun, report: EngineReport | None) -> dict[str, Any]:
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
        "report_url": f"/v1/analyses/{run.analysis_id}/report",
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


def _claim_attempt(settings: Settings, run_id: str) -> tuple[WebhookDelivery, bytes, str] | None:
    """Log the next attempt (unique per run and number) and build the body; None if done or given up."""
    with session_scope(settings) as session:
        run = session.get(AuditRun, run_id)
        audit = session.get(Audit, run.audit_id) if run else None
        if run is None or audit is None or not audit.webhook_url:
            return None
        done = session.scalar(select(func.count()).where(WebhookDelivery.run_id == run_id, WebhookDelivery.ok))
        attempts = session.scalar(select(func.count()).where(WebhookDelivery.run_id == run_id)) or 0
        if done or attempts >= settings.webhook_max_attempts:
            return None
        stored = session.get(StoredReport, run.analysis_id) if run.analysis_id else None
        report = EngineReport.model_validate_json(stored.body) if stored else None
        body = json.dumps(payload(audit, run, report), separators=(",", ":")).encode()
        row = WebhookDelivery(audit_id=audit.id, run_id=run.id, attempt=attempts + 1, url=audit.webhook_url)
        session.add(row)
        try:
            session.flush()
        except IntegrityError:  # a redelivered task is making this attempt already
            session.rollback()
            return None
        secret = audit.webhook_secret
    return row, body, secret


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


def next_attempt(settings: Settings, task: str, object_id: str, attempt: int, error: str | None) -> str:
    """After an attempt: done, give up after the last attempt, or re-enqueue after backoff * 2**(attempt-1)."""
    if error is None:
        return "delivered"
    if attempt >= settings.webhook_max_attempts:
        log.warning("webhook for %s: giving up after %d attempts (%s)", object_id, attempt, error)
        return "gave up"
    enqueue(task, object_id, settings, countdown=settings.webhook_backoff_seconds * 2 ** (attempt - 1))
    return "retrying"


def attempt(
    settings: Settings, claimed: tuple[Any, bytes, str] | None, table: type[Any], task: str, object_id: str
) -> str:
    """Send a claimed attempt, log its outcome in its row of `table`, and schedule the next if it failed."""
    if claimed is None:
        return "nothing to do"
    row, body, secret = claimed
    started = time.monotonic()
    status, category, error = post_signed(settings, row.url, secret, body, row.id)
    duration_ms = (time.monotonic() - started) * 1000
    with session_scope(settings) as session:
        session.execute(
            update(table)
            .where(table.id == row.id)
            .values(status_code=status, ok=category is None, category=category, error=error, duration_ms=duration_ms)
        )
    if category == targets.REFUSED:  # the address will not become acceptable by asking again
        return "refused"
    return next_attempt(settings, task, object_id, row.attempt, error)


def deliver(settings: Settings, run_id: str) -> str:
    """Make one delivery attempt of an audit run's notification; failures are retried with backoff."""
    return attempt(settings, _claim_attempt(settings, run_id), WebhookDelivery, DELIVER_WEBHOOK, run_id)
