"""Model registry: named versions within a project, and model references (id, name:latest, name:N)."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import ModelPackage

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


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
