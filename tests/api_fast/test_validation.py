"""Validation edge cases: unknown ids are 404, malformed bodies and parameters 422 saying what to fix, big bodies 413."""

from __future__ import annotations

from typing import Any

import pytest
from gradhealth.store.task_names import RUN_ANALYSIS

from .conftest import MAX_JSON_BYTES, MAX_UPLOAD_BYTES, Project
from .routes import UNKNOWN, lists, operations

LAYERS = [{"name": "fc1"}, {"name": "fc2"}]


def error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The error body, after checking status and code."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code, body
    return body


def test_every_read_of_an_unknown_id_is_404(project: Project) -> None:
    reads = [path for method, path in operations(project.http.app) if method == "GET" and UNKNOWN in path]  # type: ignore[arg-type]
    assert len(reads) >= 10
    for path in reads:
        body = error(project.get(path), 404, "not_found")
        assert UNKNOWN in body["message"], (path, body)


def test_unknown_model_references_say_what_to_do(project: Project) -> None:
    _, batch_id = project.seed_inputs()
    body = error(project.post("/v1/analyses", {"model_id": "nightly:latest", "batch_id": batch_id}), 404, "not_found")
    assert "no model named 'nightly'" in body["message"] and "POST /v1/models?name=nightly" in body["message"]
    body = error(project.post("/v1/analyses", {"model_id": "nightly:newest", "batch_id": batch_id}), 404, "not_found")
    assert "use 'latest' or a version number" in body["message"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({}, "model_id: Field required"),  # the batch fields are checked once the fields parse
        ({"model_id": "m", "batch_id": "b", "loss": "hinge"}, "loss: unknown loss 'hinge'"),
        ({"model_id": "m", "batch_id": "b", "precision": "fp4"}, "precision:"),
        ({"model_id": "m", "batch_id": "b", "surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"model_id": "m", "batch_id": "b", "trace_probes": 1}, "trace_probes: trace_probes must be 0"),
        ({"model_id": "m", "batch_id": "b", "trace_probes": 10**6}, "trace_probes: Input should be less than"),
        ({"model_id": "m", "batch_id": "b", "top_eigenvalues": 0}, "top_eigenvalues: Input should be greater"),
    ],
)
def test_bad_analysis_bodies_are_422_naming_the_field(project: Project, body: dict[str, Any], where: str) -> None:
    found = error(project.post("/v1/analyses", body), 422, "validation_error")
    assert found["message"].startswith(where), found
    assert project.tasks.sent == []


def test_a_model_without_a_loss_needs_one_named(project: Project) -> None:
    model_id, batch_id = project.seed_inputs(returns_loss=False)
    body = error(project.post("/v1/analyses", {"model_id": model_id, "batch_id": batch_id}), 422, "loss_required")
    assert '"loss": "cross_entropy"' in body["message"]
    accepted = project.post("/v1/analyses", {"model_id": model_id, "batch_id": batch_id, "loss": "cross_entropy"})
    assert accepted.status_code == 202 and project.tasks.named(RUN_ANALYSIS) == [accepted.json()["id"]]


def test_json_that_does_not_parse_is_422_with_where(project: Project) -> None:
    response = project.http.post(
        "/v1/runs",
        content=b'{"name": "x", "layers": [',
        headers={**project.headers("write"), "Content-Type": "application/json"},
    )
    body = error(response, 422, "validation_error")
    assert body["detail"][0]["type"] == "json_invalid", body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "r", "layers": []}, "layers: List should have at least 1 item"),
        (
            {"name": "r", "layers": [{"name": "a"}, {"name": "a"}]},
            "layers: layer names must be unique; repeated: ['a']",
        ),
        ({"name": "r", "layers": [{"name": ""}]}, "layers.0.name: String should have at least 1 character"),
        ({"name": "r", "layers": LAYERS, "metrics": ["grad_norm", "loss"]}, "metrics: metrics must be distinct names"),
        ({"name": "r", "layers": LAYERS, "webhook_url": "ftp://x"}, "webhook_url: webhook_url must be an http://"),
    ],
)
def test_bad_run_bodies_are_422_naming_the_field(project: Project, body: dict[str, Any], message: str) -> None:
    assert error(project.post("/v1/runs", body), 422, "validation_error")["message"].startswith(message)


def test_an_internal_webhook_address_is_refused_at_creation(project: Project) -> None:
    body = {"name": "r", "layers": LAYERS, "webhook_url": "http://10.0.0.1/hook"}
    found = error(project.post("/v1/runs", body), 422, "validation_error")
    assert found["message"].startswith("webhook_url:") and "internal address" in found["message"]
    assert "GRADHEALTH_WEBHOOK_ALLOW_HOSTS" in found["message"] and project.get("/v1/runs").json()["count"] == 0


def test_a_bad_cron_schedule_is_422_with_an_example(project: Project) -> None:
    model_id, batch_id = project.seed_inputs()
    body = {"name": "nightly", "schedule": "every night", "model": model_id, "batch_id": batch_id}
    assert "5 fields" in error(project.post("/v1/audits", body), 422, "validation_error")["message"]
    body["schedule"] = "0 3 * * *"
    created = project.post("/v1/audits", body)
    assert created.status_code == 201 and created.headers["location"] == f"/v1/audits/{created.json()['id']}"


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"limit": 0}, "query.limit:"),
        ({"limit": 501}, "query.limit:"),
        ({"limit": "ten"}, "query.limit:"),
        ({"offset": -1}, "query.offset:"),
        ({"offset": 2**31}, "query.offset:"),
    ],
)
def test_page_bounds_on_every_list_are_422(project: Project, params: dict[str, Any], where: str) -> None:
    pages = [path for path in lists(project.http.app) if UNKNOWN not in path]  # type: ignore[arg-type]
    assert {"/v1/analyses", "/v1/audits", "/v1/models", "/v1/runs"} <= set(pages)
    for path in pages:
        scope = "admin" if path.startswith("/v1/admin/") else "read"  # the deletion log is an admin view
        assert error(project.get(path, scope, params), 422, "validation_error")["message"].startswith(where), path


def test_an_unknown_status_filter_is_422_listing_the_states(project: Project) -> None:
    body = error(project.get("/v1/analyses", params={"status": "done"}), 422, "validation_error")
    assert "'queued', 'running', 'succeeded' or 'failed'" in body["message"], body


def test_a_json_body_over_the_limit_is_413_naming_the_setting(project: Project) -> None:
    huge = {"name": "r", "layers": [{"name": f"layer.{i}"} for i in range(MAX_JSON_BYTES // 16)]}
    body = error(project.post("/v1/runs", huge), 413, "payload_too_large")
    assert body["detail"] == {"limit": MAX_JSON_BYTES} and "GRADHEALTH_MAX_JSON_BYTES" in body["message"]
    assert project.get("/v1/runs").json()["count"] == 0


def test_an_upload_over_the_limit_is_413_and_stores_nothing(project: Project) -> None:
    response = project.http.post(
        "/v1/models",
        content=b"\0" * (2 * MAX_UPLOAD_BYTES),
        headers={**project.headers("write"), "Content-Type": "application/octet-stream"},
    )
    assert "GRADHEALTH_MAX_UPLOAD_BYTES" in error(response, 413, "payload_too_large")["message"]
    assert project.get("/v1/models").json()["count"] == 0


def test_a_report_before_the_analysis_finished_is_409_with_retry_after(project: Project) -> None:
    model_id, batch_id = project.seed_inputs()
    analysis = project.post("/v1/analyses", {"model_id": model_id, "batch_id": batch_id}).json()
    response = project.get(f"/v1/analyses/{analysis['id']}/report")
    assert error(response, 409, "not_ready")["message"].startswith("the analysis is queued")
    assert response.headers["retry-after"] == "1"


def test_curvature_settings_reach_the_engine_options() -> None:
    from gradhealth.api.schemas import AnalysisSetup

    options = AnalysisSetup.model_validate({"checks": ["curvature"], "trace_probes": 0, "top_eigenvalues": 3}).options()
    assert (options.checks, options.trace_probes, options.top_eigenvalues) == (("curvature",), 0, 3)
    assert AnalysisSetup().options().trace_probes == 4  # the engine's default when the request leaves it out
