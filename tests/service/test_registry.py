"""Model registry over the real stack: named versions, tags, name:latest wherever a model id goes."""

from __future__ import annotations

import secrets

from .artifacts import Files
from .conftest import Stack


def test_named_uploads_get_versions_and_latest_resolves(stack: Stack, files: Files) -> None:
    api = stack.client()
    name = f"mlp-{secrets.token_hex(3)}"
    with open(files.models["cnn_batchnorm"], "rb") as handle:  # name and tags as form fields
        first = api.http.post("/v1/models", files={"file": handle}, data={"name": name, "tags": "prod, v1"})
    assert first.status_code in (200, 201), first.text  # 200: other tests uploaded these bytes unnamed
    assert (first.json()["name"], first.json()["version"], first.json()["tags"]) == (name, 1, ["prod", "v1"])
    with open(files.models["mlp_dead_relu_negative_bias"], "rb") as handle:  # name as a query parameter
        second = api.http.post("/v1/models", params={"name": name}, files={"file": handle})
    assert second.status_code in (200, 201) and second.json()["version"] == 2
    with open(files.models["cnn_batchnorm"], "rb") as handle:  # same bytes: the existing version
        again = api.http.post("/v1/models", params={"name": name}, files={"file": handle})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    with open(files.models["cnn_batchnorm"], "rb") as handle:  # same bytes, another name: say where they are
        clash = api.http.post("/v1/models", params={"name": name + "-other"}, files={"file": handle})
    assert clash.status_code == 409 and f"{name}:1" in clash.json()["error"]["message"]

    listed = api.http.get("/v1/models", params={"name": name}).json()
    assert listed["count"] == 2 and [m["version"] for m in listed["data"]] == [2, 1]
    assert api.http.get(f"/v1/models/{name}:latest").json()["id"] == second.json()["id"]
    assert api.http.get(f"/v1/models/{name}:1").json()["id"] == first.json()["id"]

    batch = api.upload("batches", files.batches["mlp_dead_relu_negative_bias"])["id"]
    created = api.http.post("/v1/analyses", json={"model_id": f"{name}:latest", "batch_id": batch})
    assert created.status_code == 202 and created.json()["model_id"] == second.json()["id"]
    api.wait(created.json()["id"])


def test_unknown_names_and_bad_names_are_clear(stack: Stack, files: Files) -> None:
    api = stack.client()
    batch = api.upload("batches", files.batches["relu_mlp"])["id"]
    missing = api.http.post("/v1/analyses", json={"model_id": "nope:latest", "batch_id": batch})
    assert missing.status_code == 404
    assert "no model named 'nope'" in missing.json()["error"]["message"]
    assert api.http.get("/v1/models/nope:3").status_code == 404
    with open(files.models["cnn_batchnorm"], "rb") as handle:
        bad = api.http.post("/v1/models", params={"name": "a:b"}, files={"file": handle})
    assert bad.status_code == 422 and "bad model name" in bad.json()["error"]["message"]
