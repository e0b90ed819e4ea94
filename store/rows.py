"""Queries every resource shares: a project-scoped get, a sha256 twin, an insert, one page of a list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Base, Batch, ModelPackage

Row = TypeVar("Row", bound=Base)
Upload = TypeVar("Upload", ModelPackage, Batch)


@dataclass(frozen=True)
class Page(Generic[Row]):
    """One page of a list and the total it was cut from: what every list endpoint answers as {data, count}."""

    rows: list[Row]
    count: int


def owned(session: Session, table: type[Row], row_id: str, project_id: str) -> Row | None:
    """The row when it exists in this project; None otherwise, so another project's id reads as unknown."""
    row = session.get(table, row_id)
    return row if row is not None and getattr(row, "project_id", None) == project_id else None


def by_sha256(session: Session, table: type[Upload], project_id: str, sha256: str) -> Upload | None:
    """The upload with these bytes in this project: uploads are deduplicated per project by content."""
    return session.scalar(select(table).where(table.project_id == project_id, table.sha256 == sha256))


def save(session: Session, row: Row) -> Row:
    """Insert and commit one row; IntegrityError reaches the caller, which knows what a lost race means."""
    session.add(row)
    session.commit()
    return row


def page(
    session: Session, table: type[Row], where: Sequence[Any], order: Sequence[Any], limit: int, offset: int
) -> Page[Row]:
    """One page (limit, offset, in this order) and the count of all matching rows: one way for every list."""
    count = session.scalar(select(func.count()).select_from(table).where(*where)) or 0
    rows = session.scalars(select(table).where(*where).order_by(*order).limit(limit).offset(offset)).all()
    return Page(list(rows), count)
