"""Idempotent creation: one behaviour for every POST that honours an Idempotency-Key.

The same key with the same request returns the row the first request created (no second row,
no second task); the same key with a different request is refused, naming the fields that differ,
because silently answering with the first resource would hide the client's bug. A unique
(project_id, idempotency_key) constraint settles concurrent retries: the loser reads the winner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import Analysis, TrainingRun

Keyed = TypeVar("Keyed", Analysis, TrainingRun)


class KeyReused(ValueError):
    """The Idempotency-Key was first used with a different request; `fields` are the ones that differ."""

    def __init__(self, fields: list[str]) -> None:
        super().__init__(f"the Idempotency-Key was first used with different {', '.join(fields)}")
        self.fields = fields


def replay(
    session: Session, table: type[Keyed], project_id: str, key: str, request: Mapping[str, object]
) -> Keyed | None:
    """The row the first request with this key created; KeyReused when that request differed from this one."""
    row = session.scalars(
        select(table).where(table.project_id == project_id, table.idempotency_key == key)
    ).one_or_none()
    if row is None:
        return None
    differs = sorted(field for field, value in request.items() if getattr(row, field) != value)
    if differs:
        raise KeyReused(differs)
    return row


def create_once(
    session: Session,
    table: type[Keyed],
    project_id: str,
    key: str | None,
    request: Mapping[str, object],
    extra: Mapping[str, object] | None = None,
) -> tuple[Keyed, bool]:
    """(row, created): the first row for this key, or a new row built from `request` and `extra`, committed."""
    if key is not None and (existing := replay(session, table, project_id, key, request)) is not None:
        return existing, False
    row = table(project_id=project_id, idempotency_key=key, **request, **(extra or {}))
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # a concurrent retry with the same key committed first
        session.rollback()
        winner = replay(session, table, project_id, key, request) if key is not None else None
        if winner is None:
            raise
        return winner, False
    return row, True
