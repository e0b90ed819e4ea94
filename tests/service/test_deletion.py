"""DELETE endpoints and the deletion log on the distributed stack (real uvicorn, workers, PostgreSQL)."""

from __future__ import annotations

import secrets
from pathlib import Path

import torch
from gradhealth.store import keys
from gradhealth.store.blobs import blob_store
from gradhealth.store.db import session_scope

import gradhealth

from .artifacts import Files
from .conftest import Stack, admin


def _unique_batch(path: Path) -> Path:
    """A batch no other test uploads, so its blob is held by this test's row alone."""
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    return gradhealth.save_batch(path, torch.randn(32, 64, generator=gen), torch.randint(0, 10, (32,), generator=gen))


def test_delete_refuses_what_is_referenced_and_logs_who_deleted(stack: Stack, files: Files, tmp_path: Path) -> None:
    api = stack.client()
    model = api.upload("models", files.models["deep_sigmoid_mlp"])
    batch = api.upload("batches", _unique_batch(tmp_path / "b.safetensors"))
    created = api.http.post("/v1/analyses", json={"model_id": model["id"], "batch_id": batch["id"]})
    assert created.status_code == 202, created.text
    analysis_id = created.json()["id"]
    store = blob_store(stack.settings)
    assert store.exists(batch["sha256"])

    other = admin(stack.env, "create-project", f"other-{secrets.token_hex(4)}")
    assert other.returncode == 0, other.stderr
    intruder = stack.client(other.stdout.strip())
    for path in (f"/v1/analyses/{analysis_id}", f"/v1/batches/{batch['id']}", f"/v1/models/{model['id']}"):
        response = intruder.http.delete(path)
        assert response.status_code == 404, response.text
        assert "in this project" in response.json()["error"]["message"]

    api.wait(analysis_id)
    refused = api.http.delete(f"/v1/batches/{batch['id']}")
    assert refused.status_code == 409
    assert f"used by analysis {analysis_id}" in refused.json()["error"]["message"]
    assert api.http.delete(f"/v1/models/{model['id']}").status_code == 409
    assert store.exists(batch["sha256"])

    assert api.http.delete(f"/v1/analyses/{analysis_id}").status_code == 204
    assert api.http.get(f"/v1/analyses/{analysis_id}").status_code == 404
    assert api.http.get(f"/v1/analyses/{analysis_id}/report").status_code == 404
    assert api.http.delete(f"/v1/analyses/{analysis_id}").status_code == 404
    assert api.http.delete(f"/v1/batches/{batch['id']}").status_code == 204
    assert not store.exists(batch["sha256"])  # no row of any project holds those bytes now

    with session_scope(stack.settings) as session:
        key_id = keys.authenticate(session, stack.key).key_id  # type: ignore[union-attr]
    log = api.http.get("/v1/admin/deletions", params={"limit": 500})
    assert log.status_code == 200
    entries = {(e["kind"], e["object_id"]): e for e in log.json()["data"]}
    assert entries[("analysis", analysis_id)]["actor"] == f"key:{key_id}"
    assert entries[("batch", batch["id"])]["sha256"] == batch["sha256"]
    assert all(e["reason"] == "request" for e in entries.values() if e["object_id"] in (analysis_id, batch["id"]))
    assert intruder.http.get("/v1/admin/deletions").json()["count"] == 0


def test_shared_blob_stays_while_another_project_holds_it(stack: Stack, tmp_path: Path) -> None:
    path = _unique_batch(tmp_path / "shared.safetensors")
    api = stack.client()
    other = admin(stack.env, "create-project", f"sharer-{secrets.token_hex(4)}")
    theirs = stack.client(other.stdout.strip())
    mine, copy = api.upload("batches", path), theirs.upload("batches", path)
    assert mine["sha256"] == copy["sha256"] and mine["id"] != copy["id"]
    assert api.http.delete(f"/v1/batches/{mine['id']}").status_code == 204
    store = blob_store(stack.settings)
    assert store.exists(mine["sha256"])  # the other project's batch still reads these bytes
    assert theirs.http.get(f"/v1/batches/{copy['id']}").status_code == 200
    assert theirs.http.delete(f"/v1/batches/{copy['id']}").status_code == 204
    assert not store.exists(mine["sha256"])


def test_delete_needs_write_scope_and_ids_are_checked(stack: Stack) -> None:
    reader = admin(stack.env, "create-key", "ci", "--scope", "read")
    response = stack.client(reader.stdout.strip()).http.delete("/v1/runs/nope")
    assert response.status_code == 403 and "needs 'write'" in response.json()["error"]["message"]
    missing = stack.client().http.delete("/v1/runs/" + "x" * 300)
    assert missing.status_code == 404
    prune = stack.client(reader.stdout.strip()).http.post("/v1/admin/prune", json={"older_than": "30d"})
    assert prune.status_code == 403
    for age in ("30 days", "0d", "-1d"):
        bad = stack.client().http.post("/v1/admin/prune", json={"older_than": age})
        assert bad.status_code == 422 and "use a positive whole number" in bad.json()["error"]["message"]
    long = stack.client().http.post("/v1/admin/prune", json={"older_than": "9" * 400 + "d"})
    assert long.status_code == 422 and "at most 16 characters" in long.json()["error"]["message"]
    extra = stack.client().http.post("/v1/admin/prune", json={"older_than": "1d", "project_id": "x"})
    assert extra.status_code == 422
