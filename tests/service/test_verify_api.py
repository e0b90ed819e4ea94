"""The verify check through the service (real `gradhealth serve`: API, worker, sandboxed child) and the SDK."""

from __future__ import annotations

from pathlib import Path

import pytest

import gradhealth
from tests.zoo import by_name

from .conftest import Embedded


@pytest.fixture(scope="module")
def dead_relu(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The zoo's dead-ReLU MLP as a package and a batch."""
    root = tmp_path_factory.mktemp("verify")
    model, loss, inputs, targets = by_name("mlp_dead_relu_negative_bias").build()
    batch = gradhealth.save_batch(root / "batch.safetensors", inputs, targets)
    return gradhealth.package(model, loss, inputs, targets, root / "model.pt2"), batch


def test_rest_verify_attaches_the_measured_effect(embedded: Embedded, dead_relu: tuple[Path, Path]) -> None:
    api = embedded.client()
    try:
        created = api.analyze(*dead_relu, checks=["verify"], verify_steps=15)
        done = api.wait(created["id"], timeout=180)
        assert done["status"] == "succeeded", done
        report = api.report(done["id"]).json()
        markdown = api.report(done["id"], fmt="markdown").text
    finally:
        api.close()
    (finding,) = [f for f in report["findings"] if f["rule"] == "dead_relu"]
    top = finding["remediation"][0]
    v = top["verification"]
    assert top["action"] == "fix_bias_and_init" and v["status"] == "verified" and v["improved"] is True
    assert v["steps"] == 15 and len(v["remediated"]["grad_norm"]) == 15 and len(v["remediated"]["loss"]) == 16
    assert v["remediated"]["loss"][-1] < 0.9 * v["baseline"]["loss"][-1]
    assert report["timings"]["verify"] > 0 and report["metrics"]["verify_trials"] >= 2
    assert "*verified*: loss" in markdown


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"checks": ["verify"], "verify_steps": 10**9}, "verify_steps"),
        ({"checks": ["verify"], "verify_steps": -5}, "verify_steps"),
        ({"checks": ["verify"], "verify_max_trials": 10**6}, "verify_max_trials"),
        ({"checks": ["verify", "retrain_forever"]}, "checks"),
        ({"checks": ["verify"], "optimizer": {"name": "sgd", "lr": -1.0}}, "lr"),
    ],
)
def test_absurd_verify_requests_are_a_422(
    embedded: Embedded, dead_relu: tuple[Path, Path], options: dict[str, object], field: str
) -> None:
    api = embedded.client()
    try:
        model_id = api.upload("models", dead_relu[0])["id"]
        batch_id = api.upload("batches", dead_relu[1])["id"]
        response = api.http.post("/v1/analyses", json={"model_id": model_id, "batch_id": batch_id, **options})
    finally:
        api.close()
    assert response.status_code == 422, response.text
    assert field in response.text


def test_sdk_verify(embedded: Embedded, dead_relu: tuple[Path, Path]) -> None:
    with gradhealth.Client(base_url=embedded.base_url, api_key=embedded.key) as client:
        report = client.analyze(dead_relu[0], data=dead_relu[1], checks=["standard", "verify"], progress=False)
    top = report.findings_for("dead_relu")[0].remediation[0]
    assert top.verification is not None and top.verification.status == "verified"
