"""The notification outbox: a delivery row is written with the event, sent when due, retried by due time.

The database, not the broker, holds every pending notification: the row that marks a run notified
is committed together with its first delivery row, a retry is a new row with a later `due_at`, and
each worker's ticker enqueues the rows that are due. A broker outage therefore delays a webhook and
never drops it, and no worker holds a countdown task (which is what made Celery exit when Redis
went away). A row is pending while `due_at` is set; `claimed_at` is a lease, so a second message
for the same row is a no-op and a worker that died mid-send is replaced once the lease runs out.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import session_scope
from .models import RunWebhookDelivery, WebhookDelivery, utcnow
from .settings import Settings

Table = type[WebhookDelivery] | type[RunWebhookDelivery]
Build = Callable[[Session, WebhookDelivery | RunWebhookDelivery], tuple[bytes, str] | None]


@dataclass(frozen=True)
class Claimed:
    """One attempt this worker owns until its lease ends: the row, and the signed body's parts."""

    id: str
    attempt: int
    url: str
    claimed_at: datetime
    body: bytes
    secret: str


def new_secret() -> str:
    """A webhook signing secret: shown to the user once, kept in clear because signing needs it."""
    return "whsec_" + secrets.token_hex(24)


def lease(settings: Settings) -> timedelta:
    """How long a claimed or enqueued row is left alone: always longer than one POST may take."""
    return timedelta(seconds=max(settings.webhook_lease_seconds, settings.webhook_timeout_seconds + 5.0))


def first_due(settings: Settings) -> datetime:
    """The due time of a new row whose task is sent right after commit: the ticker steps in after the lease."""
    return utcnow() + lease(settings)


def take_due(settings: Settings, table: Table, now: datetime, limit: int = 100) -> list[tuple[str, datetime]]:
    """Rows due now, each moved one lease ahead (compare-and-set, so one ticker wins); returns (id, old due)."""
    with session_scope(settings) as session:
        due = session.execute(
            select(table.id, table.due_at).where(table.due_at <= now).order_by(table.due_at).limit(limit)
        ).all()
        won = []
        for row_id, due_at in due:
            moved = session.execute(
                update(table).where(table.id == row_id, table.due_at == due_at).values(due_at=now + lease(settings))
            ).rowcount
            if moved == 1:
                won.append((row_id, due_at))
    return won


def make_due(settings: Settings, table: Table, row_id: str) -> None:
    """The task could not be enqueued (broker down): due again now, so the next tick retries it."""
    with session_scope(settings) as session:
        session.execute(update(table).where(table.id == row_id, table.due_at.is_not(None)).values(due_at=utcnow()))


def hand_over(settings: Settings, table: Table, task: str, row_id: str, send: Callable[[str, str], object]) -> None:
    """Right after the commit: send the row's task now; when the broker refuses, the next tick sends it."""
    if send(task, row_id) is False:
        make_due(settings, table, row_id)


def claim(settings: Settings, table: Table, row_id: str, build: Build) -> Claimed | None:
    """Own a pending row for one lease and build its body; None when done, or held by a live claim."""
    now = utcnow()
    with session_scope(settings) as session:
        won = session.execute(
            update(table)
            .where(
                table.id == row_id,
                table.due_at.is_not(None),
                or_(table.claimed_at.is_(None), table.claimed_at < now - lease(settings)),
            )
            .values(claimed_at=now, due_at=now + lease(settings))
        ).rowcount
        if won != 1:
            return None
        row = session.get(table, row_id)
        assert row is not None
        built = build(session, row)
        if built is None:  # the run or audit lost its webhook: nothing to send, ever
            row.due_at, row.error = None, "the webhook was removed before this attempt"
            return None
        return Claimed(row.id, row.attempt, row.url, now, built[0], built[1])


def finish(
    settings: Settings,
    table: Table,
    claimed: Claimed,
    status: int | None,
    category: str | None,
    error: str | None,
    duration_ms: float,
    retry: bool,
) -> datetime | None:
    """Record the attempt and, in the same transaction, the next one when it failed; returns the retry's due time."""
    now = utcnow()
    with session_scope(settings) as session:
        mine = session.execute(
            update(table)
            .where(table.id == claimed.id, table.claimed_at == claimed.claimed_at, table.due_at.is_not(None))
            .values(
                due_at=None,
                ok=category is None,
                status_code=status,
                category=category,
                error=error,
                duration_ms=duration_ms,
            )
        ).rowcount
        if mine != 1 or category is None or not retry or claimed.attempt >= settings.webhook_max_attempts:
            return None
        row = session.get(table, claimed.id)
        assert row is not None
        due = now + timedelta(seconds=settings.webhook_backoff_seconds * 2 ** (claimed.attempt - 1))
        try:
            with session.begin_nested():
                session.add(next_row(row, due))
        except IntegrityError:  # the next attempt exists already (a replaced worker got here first)
            return None
    return due


def next_row(row: WebhookDelivery | RunWebhookDelivery, due: datetime) -> WebhookDelivery | RunWebhookDelivery:
    """The retry of a failed attempt: same target, attempt + 1, pending until `due`."""
    if isinstance(row, WebhookDelivery):
        return WebhookDelivery(
            audit_id=row.audit_id, run_id=row.run_id, attempt=row.attempt + 1, url=row.url, due_at=due
        )
    return RunWebhookDelivery(run_id=row.run_id, attempt=row.attempt + 1, url=row.url, due_at=due)
