"""The fast API tier: the real app in-process (TestClient), SQLite in a temp folder, tasks run eagerly.

No Redis, PostgreSQL, worker or uvicorn: validation, auth, idempotency and paging edge cases run in
seconds here, while tests/service keeps proving the real stack. One app serves the whole session;
each test gets its own project (tenancy isolates it), and the task runner is emptied per test.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi", reason="server extra not installed")

from fastapi.testclient import TestClient  # noqa: E402
from gradhealth.api.main import create_app  # noqa: E402
from gradhealth.store import keys  # noqa: E402
from gradhealth.store.blobs import blob_store
from gradhealth.store.db import migrate, session_scope  # noqa: E402
from gradhealth.store.models import Batch, ModelPackage  # noqa: E402
from gradhealth.store.settings import Settings  # noqa: E402

MAX_JSON_BYTES = 64 * 1024  # small limits, so a 413 costs kilobytes here
MAX_UPLOAD_BYTES = 256 * 1024


@dataclass
class EagerTasks:
    """The fast tier's task runner: records every task and runs the ones given a handler, at once, in-process."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    handlers: dict[str, Callable[[str], object]] = field(default_factory=dict)

    def __call__(self, task: str, object_id: str) -> object:
        self.sent.append((task, object_id))
        handler = self.handlers.get(task)
        return handler(object_id) if handler is not None else True

    def named(self, task: str) -> list[str]:
        """The ids sent with this task, in order."""
        return [object_id for name, object_id in self.sent if name == task]


@dataclass
class Project:
    """A fresh project with a key of each scope, and direct store access for seeding rows."""

    http: TestClient
    settings: Settings
    tasks: EagerTasks
    id: str
    keys: dict[str, str]

    def headers(self, scope: str = "admin") -> dict[str, str]:
        """Authorization for a key holding exactly `scope`."""
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    def get(self, path: str, scope: str = "read", params: dict[str, Any] | None = None) -> httpx.Response:
        """GET with a key of this scope."""
        return self.http.get(path, headers=self.headers(scope), params=params)

    def post(
        self, path: str, body: Any = None, scope: str = "write", headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST a JSON body with a key of this scope (plus any extra headers)."""
        return self.http.post(path, json=body, headers={**self.headers(scope), **(headers or {})})

    def stored_blob(self) -> str:
        """The sha256 of 16 random bytes committed to the blob store: an analysis is queued only when its inputs are stored."""
        store = blob_store(self.settings)
        staged = store.stage()
        staged.write(secrets.token_bytes(16))
        return store.commit(staged)

    def seed_inputs(self, returns_loss: bool = True) -> tuple[str, str]:
        """A model and a batch row as an upload would leave them (no torch needed: nothing runs them here)."""
        shas = [self.stored_blob(), self.stored_blob()]
        with session_scope(self.settings) as session:
            model = ModelPackage(
                project_id=self.id,
                sha256=shas[0],
                size_bytes=1,
                format="torch.export",
                returns_loss=returns_loss,
            )
            batch = Batch(project_id=self.id, sha256=shas[1], size_bytes=16, shapes="{}")
            session.add_all([model, batch])
            session.flush()
            return model.id, batch.id


@pytest.fixture(scope="session")
def fast_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root: Path = tmp_path_factory.mktemp("api_fast")
    settings = Settings(
        data_dir=root,
        key_cache_seconds=0,  # a revoked key is refused on the next request
        max_json_bytes=MAX_JSON_BYTES,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        webhook_allow_hosts="127.0.0.1",
    )
    migrate(settings)
    return settings


@pytest.fixture(scope="session")
def eager() -> EagerTasks:
    return EagerTasks()


@pytest.fixture(scope="session")
def http(fast_settings: Settings, eager: EagerTasks) -> Iterator[TestClient]:
    with TestClient(create_app(fast_settings, send=eager)) as client:
        yield client


def new_project(http: TestClient, settings: Settings, tasks: EagerTasks) -> Project:
    """A project of its own, with one key per scope."""
    with session_scope(settings) as session:
        project = keys.create_project(session, f"fast-{secrets.token_hex(4)}")
        scoped = {scope: keys.create_key(session, project, [scope]) for scope in keys.SCOPES}
        return Project(http, settings, tasks, project.id, scoped)


@pytest.fixture
def project(http: TestClient, fast_settings: Settings, eager: EagerTasks) -> Project:
    eager.sent.clear()
    eager.handlers.clear()
    return new_project(http, fast_settings, eager)


@pytest.fixture
def other(http: TestClient, fast_settings: Settings, eager: EagerTasks) -> Project:
    return new_project(http, fast_settings, eager)
