"""GET /v1/reports/{baseline}/compare/{analysis} over the real stack: the SDK's comparison, server-side."""

from __future__ import annotations

from .artifacts import Files
from .conftest import Stack


def test_scaled_layer_init_is_a_regression_naming_the_layer(stack: Stack, files: Files) -> None:
    api = stack.client()
    before = api.analyze(files.models["relu_mlp"], files.batches["relu_mlp"])["id"]
    after = api.analyze(files.models["relu_mlp_scaled"], files.batches["relu_mlp"])["id"]
    assert api.wait(before)["status"] == "succeeded" and api.wait(after)["status"] == "succeeded"

    response = api.http.get(f"/v1/reports/{before}/compare/{after}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["regressed"] is True and body["health_before"] == "healthy"
    worse = {c["layer"] for c in body["layer_changes"] if c["worse"]}
    assert "net.24" in worse
    assert any("net.24" in reason for reason in body["reasons"]), body["reasons"]

    back = api.http.get(f"/v1/reports/{after}/compare/{before}").json()
    assert back["regressed"] is False and back["resolved"]


def test_compare_unknown_and_unfinished_analyses(stack: Stack, files: Files) -> None:
    api = stack.client()
    done = api.analyze(files.models["relu_mlp"], files.batches["relu_mlp"])["id"]
    api.wait(done)
    missing = api.http.get(f"/v1/reports/{done}/compare/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and "no analysis" in missing.json()["error"]["message"]
    slow = api.analyze(files.models["slow"], files.batches["slow"])["id"]
    pending = api.http.get(f"/v1/reports/{done}/compare/{slow}")
    assert pending.status_code == 409 and pending.json()["error"]["code"] == "not_ready"
    api.wait(slow)
