"""The distributed stack with S3 blobs: workers that share no disk with the API, and storage failures said clearly."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from .artifacts import Files
from .client import Api
from .conftest import Stack
from .procs import Proc, free_port, wait_for, wait_ready
from .s3server import S3Server

pytestmark = pytest.mark.blob_backends("s3")


def bucket_keys(stack: Stack) -> set[str]:
    client = S3Server.client_for(stack.env)
    bucket = stack.settings.blob_url.removeprefix("s3://").split("/")[0]
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def files_named_like_blobs(root: Path) -> list[Path]:
    """Any file anywhere under root whose name is a sha256: a blob copy that should not be there."""
    return [p for p in root.rglob("*") if p.is_file() and len(p.name.split("-")[-1]) == 64]


def test_worker_without_the_apis_disk_analyses_through_s3(stack: Stack, files: Files) -> None:
    api = stack.client()
    done = api.wait(api.analyze(files.models["deep_sigmoid_mlp"], files.batches["deep_sigmoid_mlp"])["id"])
    assert done["status"] == "succeeded", done
    model_sha = hashlib.sha256(files.models["deep_sigmoid_mlp"].read_bytes()).hexdigest()
    assert f"blobs/{model_sha[:2]}/{model_sha}" in bucket_keys(stack)
    data_dirs = {name: Path(w.env["GRADHEALTH_DATA_DIR"]) for name, w in stack.workers.items()}
    api_dir = Path(stack.env["GRADHEALTH_DATA_DIR"])
    assert len({api_dir, *data_dirs.values()}) == 3  # three processes, three disks as far as they know
    assert files_named_like_blobs(api_dir) == []  # the API keeps only partial uploads, none left
    for name, worker in stack.workers.items():  # downloads went to a private temp dir, removed after use
        assert files_named_like_blobs(data_dirs[name]) == [], name
        # the outcome is recorded inside the download's `with`: the folder goes a moment after "succeeded"
        downloads = Path(worker.env["TMPDIR"])
        wait_for(lambda d=downloads: not list(d.glob("gradhealth-blobs-*")), 30, f"{name}'s downloads to be removed")
    api.close()


def test_missing_object_is_a_409_naming_the_batch_and_a_reupload_restores_it(stack: Stack, files: Files) -> None:
    api = stack.client()
    model = api.upload("models", files.models["relu_mlp"])["id"]
    batch = api.upload("batches", files.batches["relu_mlp"])
    store = stack.blob_store()
    assert store.delete(batch["sha256"])  # as retention or an operator would
    refused = api.http.post("/v1/analyses", json={"model_id": model, "batch_id": batch["id"]})
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert (
        error["code"] == "blob_missing"
        and batch["id"] in error["message"]
        and "upload the batch again" in error["message"]
    )
    assert error["detail"] == {"batch_id": batch["id"], "sha256": batch["sha256"]}
    again = api.upload("batches", files.batches["relu_mlp"])
    assert again["id"] == batch["id"] and store.exists(batch["sha256"])
    created = api.http.post("/v1/analyses", json={"model_id": model, "batch_id": batch["id"]})
    assert created.status_code == 202, created.text
    assert api.wait(created.json()["id"])["status"] == "succeeded"
    api.close()


def test_oversize_upload_to_s3_stores_nothing(stack: Stack) -> None:
    api = stack.client()
    before = bucket_keys(stack)
    blob = os.urandom(5 * 2**20)  # over the stack's 4 MiB limit

    def chunks():  # type: ignore[no-untyped-def]  # no Content-Length: the limit trips while streaming
        for i in range(0, len(blob), 2**16):
            yield blob[i : i + 2**16]

    response = api.http.post("/v1/batches", content=chunks(), headers={"content-type": "application/octet-stream"})
    assert response.status_code == 413, response.text
    assert bucket_keys(stack) == before
    api.close()


def fresh_batch() -> bytes:
    """A valid batch no test has uploaded before (new bytes, new sha256)."""
    import torch
    from safetensors.torch import save

    return save({"inputs": torch.randn(4, 8), "targets": torch.zeros(4, dtype=torch.long)})


def test_api_with_bad_credentials_answers_503_and_loses_nothing(stack: Stack, files: Files) -> None:
    api = stack.client()
    kept = api.upload("batches", files.batches["deep_sigmoid_mlp"])
    model = api.upload("models", files.models["deep_sigmoid_mlp"])["id"]
    before = bucket_keys(stack)
    port = free_port()
    env = {**stack.env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    proc = Proc("api_bad_s3_key", ["api", "--host", "127.0.0.1", "--port", str(port)], env, stack.root)
    new = fresh_batch()
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, path="/healthz")
        bad = Api(f"http://127.0.0.1:{port}", stack.key)
        ready = bad.http.get("/readyz")  # a load balancer takes this API out of rotation
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready", ready.text
        assert "blobs" in ready.json()["error"]["message"]
        upload = bad.http.post("/v1/batches", files={"file": ("b.safetensors", new)})
        assert upload.status_code == 503, upload.text
        error = upload.json()["error"]
        assert error["code"] == "storage_unavailable" and "AWS_SECRET_ACCESS_KEY" in error["message"]
        queued = bad.http.post("/v1/analyses", json={"model_id": model, "batch_id": kept["id"]})
        assert queued.status_code == 503 and queued.json()["error"]["code"] == "storage_unavailable"
        bad.close()
    finally:
        proc.stop()
    assert bucket_keys(stack) == before  # nothing stored was touched, nothing half-stored
    assert api.http.get(f"/v1/batches/{kept['id']}").status_code == 200
    retried = api.upload("batches", _named(new, stack.root))  # the same bytes through a healthy API: stored once
    assert retried["sha256"] == hashlib.sha256(new).hexdigest() and stack.blob_store().exists(retried["sha256"])
    api.close()


def _named(data: bytes, root: Path) -> Path:
    path = root / f"fresh-{hashlib.sha256(data).hexdigest()[:8]}.safetensors"
    path.write_bytes(data)
    return path
