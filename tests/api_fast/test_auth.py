"""Auth on every /v1 operation: no or a bad key is 401, a key without the scope is 403, another project's id is 404."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from gradhealth.store.db import session_scope
from gradhealth.store.keys import hash_key
from gradhealth.store.models import ApiKey, utcnow
from sqlalchemy import update

from .conftest import Project
from .routes import operations

LAYERS = [{"name": "fc1"}, {"name": "fc2"}]


def test_there_are_operations_to_sweep(http: TestClient) -> None:
    ops = operations(http.app)  # type: ignore[arg-type]
    assert ("POST", "/v1/analyses") in ops and ("GET", "/v1/runs") in ops and len(ops) > 15


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer ghk_not-a-key"}, {"X-API-Key": "ghk_nope"}])
def test_every_operation_refuses_a_missing_or_unknown_key(http: TestClient, headers: dict[str, str]) -> None:
    for method, path in operations(http.app):  # type: ignore[arg-type]
        response = http.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        error = response.json()["error"]
        assert error["code"] == "unauthenticated" and response.headers["www-authenticate"] == "Bearer"
        expected = "missing API key" if not headers else "invalid or revoked API key"
        assert expected in error["message"], (method, path, error)


def test_a_missing_key_says_how_to_send_and_make_one(http: TestClient) -> None:
    message = http.get("/v1/runs").json()["error"]["message"]
    assert "Authorization: Bearer <key>" in message and "gradhealth admin create-key" in message


def test_a_revoked_key_is_refused_on_the_next_request(project: Project) -> None:
    assert project.get("/v1/runs").status_code == 200
    with session_scope(project.settings) as session:
        session.execute(
            update(ApiKey).where(ApiKey.key_hash == hash_key(project.keys["read"])).values(revoked_at=utcnow())
        )
    assert project.get("/v1/runs").status_code == 401


def test_x_api_key_is_accepted_like_bearer(project: Project) -> None:
    response = project.http.get("/v1/runs", headers={"X-API-Key": project.keys["read"]})
    assert response.status_code == 200 and response.json() == {"data": [], "count": 0}


def test_a_read_key_cannot_change_anything(project: Project) -> None:
    writes = [(m, p) for m, p in operations(project.http.app) if m != "GET"]  # type: ignore[arg-type]
    assert writes
    for method, path in writes:
        response = project.http.request(method, path, headers=project.headers("read"))
        assert response.status_code == 403, (method, path, response.text)
        error = response.json()["error"]
        assert error["code"] == "forbidden" and "scope(s) [read]" in error["message"], error
        assert "--scope write" in error["message"] or "--scope admin" in error["message"], error


def test_the_scheduler_tick_needs_admin_and_admin_can_do_everything_write_can(project: Project) -> None:
    refused = project.post("/v1/audits/tick", {}, scope="write")
    assert refused.status_code == 403 and "needs 'admin'" in refused.json()["error"]["message"]
    assert project.post("/v1/audits/tick", {}, scope="admin").json() == []
    assert project.post("/v1/runs", {"name": "by admin", "layers": LAYERS}, scope="admin").status_code == 201


def test_another_projects_ids_read_as_unknown(project: Project, other: Project) -> None:
    run = project.post("/v1/runs", {"name": "mine", "layers": LAYERS}).json()
    model_id, batch_id = project.seed_inputs()
    analysis = project.post("/v1/analyses", {"model_id": model_id, "batch_id": batch_id}).json()
    for path in (
        f"/v1/runs/{run['id']}",
        f"/v1/runs/{run['id']}/report",
        f"/v1/runs/{run['id']}/deliveries",
        f"/v1/runs/{run['id']}/findings",
        f"/v1/analyses/{analysis['id']}",
        f"/v1/analyses/{analysis['id']}/report",
        f"/v1/models/{model_id}",
        f"/v1/batches/{batch_id}",
    ):
        theirs = other.get(path)
        assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found", (path, theirs.text)
        assert "in this project" in theirs.json()["error"]["message"]
    borrowed = other.post("/v1/analyses", {"model_id": model_id, "batch_id": batch_id})
    assert borrowed.status_code == 404 and model_id in borrowed.json()["error"]["message"]
    assert other.get("/v1/runs").json()["count"] == 0
    assert project.get(f"/v1/runs/{run['id']}/findings").json() == {
        "data": [],
        "count": 0,
        "health": "healthy",
        "run_steps": 0,
    }
    assert project.get(f"/v1/runs/{run['id']}/findings?severity=fatal").status_code == 422
