"""Numbers an operator alerts on, read at scrape time: failures by code, webhook failures, broker queue depth."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .celery_app import CPU_QUEUE, GPU_QUEUE
from .models import FAILED, Analysis, RunWebhookDelivery, WebhookDelivery
from .settings import Settings

# kombu's Redis transport keeps one list per priority step; a task sent without a priority lands in the first.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def failed_by_code(session: Session) -> dict[str, int]:
    """Failed analyses by error code (out_of_memory is a child that ran out of its memory limit)."""
    query = select(Analysis.error_code, func.count()).where(Analysis.status == FAILED).group_by(Analysis.error_code)
    return {code or "failed": n for code, n in session.execute(query).all()}


def webhook_failures(session: Session) -> dict[str, int]:
    """Delivery attempts that failed, by category, over audit and run webhooks together."""
    out: dict[str, int] = {}
    for table in (WebhookDelivery, RunWebhookDelivery):
        query = (
            select(table.category, func.count())
            .where(table.ok.is_(False), table.due_at.is_(None))
            .group_by(table.category)
        )
        for category, n in session.execute(query).all():
            out[category or "unknown"] = out.get(category or "unknown", 0) + n
    return out


def queue_lengths(settings: Settings) -> dict[str, int]:
    """Messages waiting in the gpu and cpu queues (Redis broker only; what KEDA scales the workers on)."""
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return {}
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_timeout=2)
    try:
        prefix = settings.broker_key_prefix
        return {
            queue: sum(int(client.llen(prefix + queue + suffix)) for suffix in _PRIORITY_SUFFIXES)  # type: ignore[arg-type]
            for queue in (GPU_QUEUE, CPU_QUEUE)
        }
    finally:
        client.close()
