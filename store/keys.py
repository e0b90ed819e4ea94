"""Projects and API keys: keys are random, shown once, and stored only as sha256."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ApiKey, Project, utcnow

SCOPES = ("read", "write", "admin")
KEY_PREFIX = "ghk_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the project the key belongs to and what the key may do."""

    project_id: str
    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """Scopes nest: admin implies write, write implies read."""
        return any(SCOPES.index(have) >= SCOPES.index(scope) for have in self.scopes)


class AdminError(LookupError):
    """A project or key request that cannot be honoured; the message says why."""


def hash_key(key: str) -> str:
    """sha256 is enough for 256-bit random keys (no password stretching needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_project(session: Session, name: str) -> Project:
    """Create a project; refuse a duplicate name with a clear message."""
    if session.scalar(select(Project).where(Project.name == name)) is not None:
        raise AdminError(f"project {name!r} already exists")
    project = Project(name=name)
    session.add(project)
    session.flush()
    return project


def find_project(session: Session, name_or_id: str) -> Project:
    """Look a project up by name or id."""
    project = session.scalar(select(Project).where((Project.name == name_or_id) | (Project.id == name_or_id)))
    if project is None:
        raise AdminError(f"no project named {name_or_id!r}; create it with `gradhealth admin create-project`")
    return project


def create_key(session: Session, project: Project, scopes: list[str] | tuple[str, ...]) -> str:
    """Make a key for a project and return it: the only time it exists in clear text."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise AdminError(f"unknown scope(s) {unknown or scopes}; use read, write or admin")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(project_id=project.id, key_hash=hash_key(key), prefix=key[:12], scopes=",".join(sorted(set(scopes))))
    )
    session.flush()
    return key


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal for a key, or None when it is unknown or revoked."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or (row.revoked_at is not None and row.revoked_at <= utcnow()):
        return None
    return Principal(project_id=row.project_id, key_id=row.id, scopes=frozenset(row.scopes.split(",")))


def find_key(session: Session, ref: str) -> ApiKey:
    """A key by its clear text, its id, or its 12-character prefix (as `list-keys` shows it)."""
    query = select(ApiKey).where((ApiKey.key_hash == hash_key(ref)) | (ApiKey.id == ref) | (ApiKey.prefix == ref))
    found = list(session.scalars(query).all())
    if not found:
        raise AdminError(
            f"no API key matches {ref!r}; pass the key, its id or its prefix (`gradhealth admin list-keys`)"
        )
    if len(found) > 1:
        raise AdminError(f"{len(found)} keys match {ref!r}; pass the key id instead")
    return found[0]


def revoke_key(session: Session, ref: str) -> ApiKey:
    """Revoke a key now (idempotent: an already revoked key keeps its first revocation time)."""
    row = find_key(session, ref)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def list_keys(session: Session, project: Project) -> list[ApiKey]:
    """The project's keys, oldest first (hashes never leave the database)."""
    return list(session.scalars(select(ApiKey).where(ApiKey.project_id == project.id).order_by(ApiKey.created_at)))
