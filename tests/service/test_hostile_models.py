"""Hostile model uploads on the real distributed stack: refused at upload, and refused again in the child.

The issue's attacks: a TorchScript module that writes a file with aten::save, one that reads the
data folder's key with torch.from_file, a junk zip with a `code/` entry. All are refused with a 422
that says how to build a .pt2. If one got past the API anyway (here: the blob is swapped on disk
after a clean upload), the worker's child refuses it too, the analysis fails with a clear message
and the worker goes on analysing.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch

from .artifacts import Files
from .conftest import Stack
from .test_sandbox_escape import _ReadsFile, _WritesFile


def _torchscript(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def _junk_code_zip(path: Path) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x/code/__torch__.py", "junk")
    path.write_bytes(buffer.getvalue())
    return path


def test_torchscript_and_code_zips_are_refused_at_upload(stack: Stack, tmp_path: Path) -> None:
    key_file = Path(stack.settings.data_dir) / "api_key"
    uploads = [
        _torchscript(_WritesFile(str(tmp_path / "dropped.pt")), tmp_path / "writer.pt"),
        _torchscript(_ReadsFile(str(key_file)), tmp_path / "reader.pt"),
        _junk_code_zip(tmp_path / "junk.zip"),
    ]
    api = stack.client()
    for path in uploads:
        with open(path, "rb") as handle:
            response = api.http.post("/v1/models", files={"file": (path.name, handle)})
        assert response.status_code == 422, response.text
        message = response.json()["error"]["message"]
        assert "gradhealth.package" in message, message
    assert not (tmp_path / "dropped.pt").exists()


def test_a_model_that_slips_past_the_api_fails_in_the_child(stack: Stack, files: Files, tmp_path: Path) -> None:
    api = stack.client()
    name = "mlp_dead_relu_negative_bias"
    model = api.upload("models", files.models[name])
    batch = api.upload("batches", files.batches[name])
    blob = stack.settings.resolved_blob_dir
    stored = [p for p in blob.rglob("*") if p.is_file() and model["sha256"] in p.name]
    assert len(stored) == 1, stored
    original = stored[0].read_bytes()
    hostile = _torchscript(_ReadsFile(str(Path(stack.settings.data_dir) / "api_key")), tmp_path / "reader.pt")
    stored[0].write_bytes(hostile.read_bytes())
    try:
        created = api.http.post("/v1/analyses", json={"model_id": model["id"], "batch_id": batch["id"]}).json()
        failed = api.wait(created["id"])
    finally:
        stored[0].write_bytes(original)
    assert failed["status"] == "failed", failed
    assert "TorchScript" in failed["error"]["message"] and "gradhealth.package" in failed["error"]["message"]
    healthy = api.analyze(files.models[name], files.batches[name])
    assert api.wait(healthy["id"])["status"] == "succeeded"
    assert all(worker.alive() for worker in stack.workers.values())
