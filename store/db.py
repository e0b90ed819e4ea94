"""Engines, sessions and start-up migrations for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import fcntl
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from .settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x67726164  # any constant shared by every process migrating this database


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL + busy timeout let the API and worker processes share one SQLite file."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One pooled engine per URL and process."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache(maxsize=8)
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """Sessions for this settings' database; objects stay readable after commit."""
    return _session_factory(settings.resolved_database_url)


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (workers, CLI)."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes with a lock file beside it."""
    path = url.split("///", 1)[-1]
    if not path or path == ":memory:":
        yield
        return
    with open(path + ".migrate.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_REVISION = re.compile(r'^(down_revision|revision) = "?([\w]+|None)"?', re.MULTILINE)


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision, read from the migration files' text (no Alembic import)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        fields = dict(_REVISION.findall(path.read_text()))
        if "revision" not in fields:
            continue  # __init__.py
        revisions.add(fields["revision"])
        parents.add(fields.get("down_revision", "None"))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations must have one head, found {sorted(heads)}")
    return heads.pop()


def _at_head(engine: Engine) -> bool:
    """True when the database is already at the newest revision (commands then skip Alembic)."""
    try:
        with engine.connect() as connection:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except Exception:  # no table yet, or no database: let Alembic create it
        return False
    return current == [head_revision()]


def migrate(settings: Settings) -> None:
    """Bring the schema to the newest Alembic revision; safe when several processes start at once."""
    url = settings.resolved_database_url
    engine = get_engine(url)
    if _at_head(engine):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url.startswith("sqlite"):
        with _sqlite_lock(url), engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        return
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def ping(settings: Settings) -> None:
    """Raise if the database does not answer a trivial query."""
    with get_engine(settings.resolved_database_url).connect() as connection:
        connection.execute(text("SELECT 1"))
