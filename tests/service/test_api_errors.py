"""Bad input gets a clear 4xx in the one error shape, never a 500: auth, uploads, requests."""

from __future__ import annotations

import os

import httpx
import pytest
from gradhealth.store import keys
from gradhealth.store.db import session_scope

from .artifacts import Files
from .conftest import Stack


def error(response: httpx.Response, status: int, code: str | None = None) -> str:
    """Assert the status and the error shape; return the message."""
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"code", "message", "detail"} and body["message"]
    if code:
        assert body["code"] == code, body
    return body["message"]


@pytest.fixture(scope="module")
def other_key(stack: Stack) -> str:
    """A write key of a second project."""
    with session_scope(stack.settings) as session:
        return keys.create_key(session, keys.create_project(session, "other-team"), ["write"])


@pytest.fixture(scope="module")
def read_key(stack: Stack) -> str:
    with session_scope(stack.settings) as session:
        return keys.create_key(session, keys.find_project(session, "ci"), ["read"])


@pytest.fixture(scope="module")
def uploaded(stack: Stack, files: Files) -> dict[str, str]:
    """A model, a batch and a finished analysis owned by project 'ci'."""
    api = stack.client()
    created = api.analyze(files.models["mlp_dead_relu_negative_bias"], files.batches["mlp_dead_relu_negative_bias"])
    api.wait(created["id"])
    return {"model": created["model_id"], "batch": created["batch_id"], "analysis": created["id"]}


def test_missing_and_invalid_keys_are_401(stack: Stack) -> None:
    for headers in ({}, {"Authorization": "Bearer ghk_not-a-key"}, {"X-API-Key": "nope"}, {"Authorization": "Basic x"}):
        response = httpx.get(stack.base_url + "/v1/analyses", headers=headers)
        error(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == "Bearer"


def test_x_api_key_header_works(stack: Stack) -> None:
    assert httpx.get(stack.base_url + "/v1/analyses", headers={"X-API-Key": stack.key}).status_code == 200


def test_read_only_key_cannot_post(stack: Stack, files: Files, read_key: str, uploaded: dict[str, str]) -> None:
    api = stack.client(read_key)
    message = error(api.http.post("/v1/models", files={"file": ("m.pt2", b"x")}), 403, "forbidden")
    assert "'write'" in message and "--scope write" in message
    body = {"model_id": uploaded["model"], "batch_id": uploaded["batch"]}
    error(api.http.post("/v1/analyses", json=body), 403, "forbidden")
    assert api.status(uploaded["analysis"])["status"] == "succeeded"  # reading is fine
    api.close()


def test_another_projects_ids_are_404(stack: Stack, other_key: str, uploaded: dict[str, str]) -> None:
    api = stack.client(other_key)
    error(api.http.get(f"/v1/models/{uploaded['model']}"), 404, "not_found")
    error(api.http.get(f"/v1/batches/{uploaded['batch']}"), 404, "not_found")
    error(api.http.get(f"/v1/analyses/{uploaded['analysis']}"), 404, "not_found")
    error(api.http.get(f"/v1/analyses/{uploaded['analysis']}/report"), 404, "not_found")
    body = {"model_id": uploaded["model"], "batch_id": uploaded["batch"]}
    assert "no model" in error(api.http.post("/v1/analyses", json=body), 404, "not_found")
    listed = api.http.get("/v1/analyses").json()
    assert uploaded["analysis"] not in {a["id"] for a in listed["data"]}
    api.close()


def test_unknown_ids_are_404(stack: Stack, uploaded: dict[str, str]) -> None:
    api = stack.client()
    body = {"model_id": uploaded["model"], "batch_id": "00000000-0000-0000-0000-000000000000"}
    assert "no batch" in error(api.http.post("/v1/analyses", json=body), 404, "not_found")
    error(api.http.get("/v1/analyses/does-not-exist"), 404)
    error(api.http.get("/v1/nothing-here"), 404)
    api.close()


def test_bad_analysis_requests_are_422(stack: Stack, uploaded: dict[str, str]) -> None:
    api = stack.client()
    base = {"model_id": uploaded["model"], "batch_id": uploaded["batch"]}
    message = error(api.http.post("/v1/analyses", json={**base, "loss": "hinge"}), 422, "validation_error")
    assert "unknown loss 'hinge'" in message and "cross_entropy" in message
    error(api.http.post("/v1/analyses", json={**base, "optimizer": {"name": "lion", "lr": 1}}), 422)
    error(api.http.post("/v1/analyses", json={**base, "optimizer": {"name": "sgd", "lr": -1}}), 422)
    error(api.http.post("/v1/analyses", json={**base, "checks": ["everything"]}), 422)
    error(api.http.post("/v1/analyses", json={**base, "surprise": 1}), 422)
    error(api.http.post("/v1/analyses", content=b"{not json", headers={"content-type": "application/json"}), 422)
    error(api.http.get(f"/v1/analyses/{uploaded['analysis']}/report", params={"format": "pdf"}), 422)
    api.close()


def test_report_before_it_exists_is_409(stack: Stack, files: Files) -> None:
    api = stack.client()
    created = api.analyze(files.models["slow"], files.batches["slow"])
    response = api.report(created["id"])
    assert "poll" in error(response, 409, "not_ready")
    assert response.headers["retry-after"] == "1"
    api.wait(created["id"])
    api.close()


@pytest.mark.parametrize("name", ["truncated", "corrupt"])
def test_broken_archives_are_refused(stack: Stack, files: Files, name: str) -> None:
    api = stack.client()
    with open(files.models[name], "rb") as handle:
        response = api.http.post("/v1/models", files={"file": (f"{name}.pt2", handle)})
    message = error(response, 422)
    assert f"{name}.pt2" in message and "/tmp" not in message  # the client's name, not our paths
    api.close()


def test_pickle_payload_is_refused_and_never_runs(stack: Stack, files: Files) -> None:
    api = stack.client()
    with open(files.models["pickle"], "rb") as handle:
        response = api.http.post("/v1/models", files={"file": ("evil.pt2", handle)})
    message = error(response, 422, "unsafe_archive")
    assert "pickle" in message
    assert not files.marker.exists(), "the pickle payload ran"
    api.close()


def test_batch_that_is_not_safetensors_is_refused(stack: Stack, files: Files) -> None:
    api = stack.client()
    with open(files.models["plain"], "rb") as handle:
        response = api.http.post("/v1/batches", files={"file": ("batch.safetensors", handle)})
    assert "safetensors" in error(response, 422, "invalid_input")
    api.close()


def test_oversize_uploads_are_413(stack: Stack) -> None:
    api = stack.client()
    blob = os.urandom(5 * 2**20)  # the stack's limit is 4 MiB
    message = error(api.http.post("/v1/models", files={"file": ("big.pt2", blob)}), 413, "payload_too_large")
    assert "GRADHEALTH_MAX_UPLOAD_BYTES" in message
    raw = api.http.post("/v1/batches", content=blob, headers={"content-type": "application/octet-stream"})
    error(raw, 413)

    def chunks():  # no Content-Length: the limit must trip while streaming
        for i in range(0, len(blob), 2**16):
            yield blob[i : i + 2**16]

    streamed = api.http.post("/v1/models", content=chunks(), headers={"content-type": "application/octet-stream"})
    error(streamed, 413)
    assert api.http.get("/healthz").status_code == 200
    api.close()


def test_wrong_content_types_are_refused(stack: Stack) -> None:
    api = stack.client()
    message = error(api.http.post("/v1/models", json={"file": "x"}), 415, "unsupported_media_type")
    assert "multipart/form-data" in message
    error(api.http.post("/v1/batches", content=b"abc", headers={"content-type": "text/plain"}), 415)
    error(api.http.post("/v1/models", files={"wrong_field": ("m.pt2", b"abc")}), 422)
    error(api.http.post("/v1/models", content=b"", headers={"content-type": "application/octet-stream"}), 422)
    error(api.http.post("/v1/analyses", data={"model_id": "x"}), 422)
    api.close()


def test_duplicate_upload_is_deduplicated_per_project(stack: Stack, files: Files, other_key: str) -> None:
    api, other = stack.client(), stack.client(other_key)
    first = api.upload("models", files.models["deep_sigmoid_mlp"])
    with open(files.models["deep_sigmoid_mlp"], "rb") as handle:
        again = api.http.post("/v1/models", content=handle.read(), headers={"content-type": "application/octet-stream"})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    theirs = other.upload("models", files.models["deep_sigmoid_mlp"])
    assert theirs["id"] != first["id"] and theirs["sha256"] == first["sha256"]
    assert first["num_parameters"] > 0 and first["returns_loss"] is True
    api.close()
    other.close()


def test_health_ready_metrics_docs(stack: Stack) -> None:
    assert httpx.get(stack.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(stack.base_url + "/readyz").json()
    assert ready["checks"] == {"database": "ok", "broker": "ok", "blobs": "ok"}
    metrics = httpx.get(stack.base_url + "/metrics").text
    assert "gradhealth_http_requests_total" in metrics and 'gradhealth_analyses{status="succeeded"}' in metrics
    assert httpx.get(stack.base_url + "/docs").status_code == 200
    spec = httpx.get(stack.base_url + "/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/v1/models"]["post"]["requestBody"]["content"]


def test_idempotency_key_makes_a_retried_post_return_the_first_analysis(stack: Stack, uploaded: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {stack.key}", "Idempotency-Key": f"retry-{os.getpid()}"}
    body = {"model_id": uploaded["model"], "batch_id": uploaded["batch"]}
    first = httpx.post(stack.base_url + "/v1/analyses", json=body, headers=headers)
    again = httpx.post(stack.base_url + "/v1/analyses", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other = httpx.post(stack.base_url + "/v1/analyses", json={**body, "precision": "fp16"}, headers=headers)
    error(other, 422, "idempotency_key_reused")
    fresh = httpx.post(stack.base_url + "/v1/analyses", json=body, headers={"Authorization": f"Bearer {stack.key}"})
    assert fresh.json()["id"] != first.json()["id"]
