"""Several batches on the real stack (uvicorn API, Celery workers, PostgreSQL, Redis, sandboxed child): issue 13."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gradhealth.diagnostics import analyze_files
from torch import nn

import gradhealth

from .conftest import Stack


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A small model package and three batches of different sizes and contents."""
    root = tmp_path_factory.mktemp("several")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    batches = []
    for i in range(3):
        x, y = torch.randn(8 + 2 * i, 6), torch.randint(0, 3, (8 + 2 * i,))
        batches.append(gradhealth.save_batch(root / f"b{i}.safetensors", x, y))
    return gradhealth.package(model, "cross_entropy", x, y, root / "model.pt2"), batches


def test_three_batches_merge_to_the_mean_of_three_single_analyses(stack: Stack, three: tuple[Path, list[Path]]) -> None:
    model_path, batch_paths = three
    api = stack.client()
    model_id = api.upload("models", model_path)["id"]
    batch_ids = [api.upload("batches", p)["id"] for p in batch_paths]
    created = api.http.post("/v1/analyses", json={"model_id": model_id, "batch_ids": batch_ids})
    assert created.status_code == 202, created.text
    done = api.wait(created.json()["id"])
    assert done["status"] == "succeeded", done
    assert done["batch_ids"] == batch_ids
    report = api.report(done["id"]).json()
    api.close()
    singles = [analyze_files(model_path, p).metrics["loss"] for p in batch_paths]  # computed independently
    merged = report["estimates"]["across_batches.loss"]
    assert merged["value"] == pytest.approx(sum(singles) / 3, rel=1e-4)  # type: ignore[arg-type]
    assert merged["samples"] == 3 and merged["method"] == "across batches"
    assert report["metrics"]["batches"] == 3


def test_the_sdk_sends_a_list_of_batches(stack: Stack, three: tuple[Path, list[Path]]) -> None:
    model_path, batch_paths = three
    with gradhealth.Client(base_url=stack.base_url, api_key=stack.key) as client:
        report = client.analyze(model_path, batches=batch_paths, progress=False, timeout=120)
    assert report.estimates["across_batches.loss"].samples == 3
