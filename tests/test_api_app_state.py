"""In-process API (TestClient + SQLite): the caches belong to the app, not the process (issue 12, item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="server extra not installed")

from fastapi.testclient import TestClient  # noqa: E402
from gradhealth.api.main import create_app  # noqa: E402
from gradhealth.store import keys  # noqa: E402
from gradhealth.store.db import migrate, session_scope  # noqa: E402
from gradhealth.store.settings import Settings  # noqa: E402


def test_each_app_has_its_own_key_and_report_caches(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, key_cache_seconds=60)
    migrate(settings)
    with session_scope(settings) as session:
        key = keys.create_key(session, keys.create_project(session, "cache"), ["read"])
    first, second = create_app(settings), create_app(settings)
    with TestClient(first) as client:
        assert client.get("/v1/analyses", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/v1/analyses", headers={"Authorization": "Bearer ghk_wrong"}).status_code == 401
    assert len(first.state.key_cache.entries) == 1 and not first.state.key_cache.inflight  # the good key only
    assert second.state.key_cache.entries == {} and second.state.rendered is not first.state.rendered
