"""A database that is down or busy answers 503 with Retry-After (the SDK retries it), never a 500."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="server extra not installed")

from fastapi.testclient import TestClient  # noqa: E402
from gradhealth.api.main import create_app  # noqa: E402
from gradhealth.store.settings import Settings  # noqa: E402


def _closed_port() -> int:
    """A local port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_database_is_a_retryable_503(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/gradhealth"
    app = create_app(Settings(data_dir=tmp_path, database_url=url))
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: start-up would migrate, and fail
    response = client.get("/v1/runs", headers={"Authorization": "Bearer ghk_x_y"})
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"
    error = response.json()["error"]
    assert error["code"] == "database_unavailable" and "try again later" in error["message"]
