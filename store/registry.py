"""Model registry: named versions within a project, and model references (id, name:latest, name:N)."""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import ModelPackage
from .rows import Page, by_sha256, page

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
VERSION_RACE_RETRIES = 5


class UnknownModel(LookupError):
    """A model reference that names nothing in this project; the message says what to do."""


def valid_name(name: str) -> bool:
    """Names are path-like words without ':' so `name:latest` stays unambiguous."""
    return bool(NAME_PATTERN.match(name))


def next_version(session: Session, project_id: str, name: str) -> int:
    """The version the next upload under this name gets: previous max + 1 (1 for a new name)."""
    query = select(func.max(ModelPackage.version)).where(
        ModelPackage.project_id == project_id, ModelPackage.name == name
    )
    return int(session.scalar(query) or 0) + 1


def resolve(session: Session, project_id: str, ref: str) -> ModelPackage:
    """The model a reference names: a model id, `name:latest` (newest version) or `name:N`."""
    if ":" not in ref:
        row = session.get(ModelPackage, ref)
        if row is None or row.project_id != project_id:
            raise UnknownModel(f"no model with id {ref!r} in this project (use a model id, NAME:latest or NAME:N)")
        return row
    name, _, tag = ref.rpartition(":")
    query = select(ModelPackage).where(ModelPackage.project_id == project_id, ModelPackage.name == name)
    if tag == "latest":
        row = session.scalars(query.order_by(ModelPackage.version.desc()).limit(1)).first()
    elif tag.isdigit():
        row = session.scalars(query.where(ModelPackage.version == int(tag))).first()
    else:
        raise UnknownModel(f"bad model reference {ref!r}: after ':' use 'latest' or a version number")
    if row is None:
        what = f"no model named {name!r}" if tag == "latest" else f"no version {tag} of model {name!r}"
        raise UnknownModel(f"{what} in this project; upload one with POST /v1/models?name={name}")
    return row


def name_existing(session: Session, row: ModelPackage, name: str, tags: str | None) -> ModelPackage | None:
    """Make an unnamed upload the next version of `name`; None when racing uploads kept taking the number."""
    for _ in range(VERSION_RACE_RETRIES):
        row.name, row.version, row.tags = name, next_version(session, row.project_id, name), tags
        try:
            session.commit()
            return row
        except IntegrityError:
            session.rollback()
            session.refresh(row)
            if row.name is not None:  # a concurrent upload of the same bytes named it
                return row
    return None


def insert_next_version(session: Session, make_row: Callable[[], ModelPackage]) -> tuple[ModelPackage, bool] | None:
    """(row, created) after losing a race for a version number: retried, or the twin that stored these bytes."""
    for _ in range(VERSION_RACE_RETRIES):
        row = make_row()
        session.add(row)
        try:
            session.commit()
            return row, True
        except IntegrityError:
            session.rollback()
            twin = by_sha256(session, ModelPackage, row.project_id, row.sha256)
            if twin is not None:
                return twin, False
    return None


def list_page(session: Session, project_id: str, name: str | None, limit: int, offset: int) -> Page[ModelPackage]:
    """This project's models newest first, or the versions of one name, newest version first."""
    if name is None:
        return page(
            session,
            ModelPackage,
            [ModelPackage.project_id == project_id],
            [ModelPackage.created_at.desc()],
            limit,
            offset,
        )
    where = [ModelPackage.project_id == project_id, ModelPackage.name == name]
    return page(session, ModelPackage, where, [ModelPackage.version.desc()], limit, offset)
