"""Upload -> analyse -> report over real HTTP: uvicorn + two Celery workers, Redis, PostgreSQL."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradhealth.diagnostics.rules import RULE_IDS
from gradhealth.report import Report, severity_at_least
from gradhealth.store.db import session_scope
from gradhealth.store.models import Analysis, StoredReport
from sqlalchemy import func, select

from .artifacts import E2E_CASES, Files
from .conftest import Stack

# The distributed stack's suite runs on local disk and on S3 with workers that share no disk with the API (issue 15).
pytestmark = pytest.mark.blob_backends


def report_rows(stack: Stack, analysis_id: str) -> int:
    with session_scope(stack.settings) as session:
        query = select(func.count()).select_from(StoredReport).where(StoredReport.analysis_id == analysis_id)
        return int(session.scalar(query) or 0)


def check_formats(api, analysis_id: str) -> Report:  # type: ignore[no-untyped-def]
    """All four formats answer 200 with the right type and content."""
    response = api.report(analysis_id, "json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    report = Report.model_validate_json(response.content)

    markdown = api.report(analysis_id, "markdown")
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text.startswith("# gradhealth report") and report.summary in markdown.text

    html = api.report(analysis_id, "html")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "<svg" in html.text and "<rect" in html.text  # the per-layer gradient chart, inline
    assert "src=" not in html.text and "<link" not in html.text  # self-contained

    junit = api.report(analysis_id, "junit")
    assert junit.status_code == 200 and junit.headers["content-type"] == "application/xml"
    cases = {c.get("name"): c for c in ET.fromstring(junit.content).iter("testcase")}
    assert set(RULE_IDS) <= set(cases)
    for rule, case in cases.items():
        failing = any(severity_at_least(f.severity, "warning") for f in report.findings_for(rule))
        assert (case.find("failure") is not None) == failing, rule
    return report


@pytest.mark.slow
def test_zoo_models_end_to_end(stack: Stack, files: Files) -> None:
    api = stack.client()
    submitted = {name: api.analyze(files.models[name], files.batches[name])["id"] for name in E2E_CASES}
    for name, analysis_id in submitted.items():
        done = api.wait(analysis_id)
        assert done["status"] == "succeeded", done
        assert done["progress"] == {"phase": "done", "fraction": 1.0}
        report = check_formats(api, analysis_id)
        for rule in files.expect[name]:
            assert report.findings_for(rule), f"{name}: expected {rule}, got {[f.rule for f in report.findings]}"
        if not files.expect[name]:  # a healthy model is reported healthy, not merely "no error"
            assert report.health == "healthy", report.summary
        assert report_rows(stack, analysis_id) == 1
    api.close()


@pytest.mark.slow
def test_two_workers_share_the_queue(stack: Stack, files: Files) -> None:
    api = stack.client()
    model = api.upload("models", files.models["mlp_dead_relu_negative_bias"])["id"]
    batch = api.upload("batches", files.batches["mlp_dead_relu_negative_bias"])["id"]

    def submit(_: int) -> str:
        response = api.http.post("/v1/analyses", json={"model_id": model, "batch_id": batch})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(submit, range(4)))
    for analysis_id in ids:
        assert api.wait(analysis_id)["status"] == "succeeded"
    with session_scope(stack.settings) as session:
        workers = set(session.scalars(select(Analysis.worker).where(Analysis.id.in_(ids))))
    assert workers == {"worker_a@test", "worker_b@test"}, workers
    api.close()


@pytest.mark.slow
def test_progress_is_visible_while_running(stack: Stack, files: Files) -> None:
    api = stack.client()
    analysis_id = api.analyze(files.models["slow"], files.batches["slow"])["id"]
    seen = set()
    while (body := api.status(analysis_id))["status"] not in ("succeeded", "failed"):
        seen.add((body["status"], body["progress"]["phase"]))
        assert 0.0 <= body["progress"]["fraction"] <= 1.0
        time.sleep(0.05)
    assert body["status"] == "succeeded", body
    assert any(status == "running" and phase not in ("queued", "starting") for status, phase in seen), seen
    api.close()


@pytest.mark.slow
def test_batch_that_does_not_fit_fails_with_a_message(stack: Stack, files: Files) -> None:
    api = stack.client()
    analysis_id = api.analyze(files.models["deep_sigmoid_mlp"], files.batches["wrong_shape"])["id"]
    done = api.wait(analysis_id)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "invalid_input"
    assert "the model failed on this batch" in done["error"]["message"]
    assert "(32, 3, 16, 16)" in done["error"]["message"]  # names the shapes it got
    response = api.report(analysis_id)
    assert response.status_code == 409 and response.json()["error"]["code"] == "analysis_failed"
    api.close()


@pytest.mark.slow
def test_nan_only_batch_reports_non_finite(stack: Stack, files: Files) -> None:
    api = stack.client()
    done = api.wait(api.analyze(files.models["cnn_batchnorm"], files.batches["nan"])["id"])
    if done["status"] == "failed":
        assert "nan" in done["error"]["message"].lower() or "finite" in done["error"]["message"].lower()
        return
    report = Report.model_validate_json(api.report(done["id"]).content)
    assert report.findings_for("non_finite") and report.health == "critical", report.summary
    api.close()


def test_plain_model_with_named_loss(stack: Stack, files: Files) -> None:
    api = stack.client()
    model = api.upload("models", files.models["plain"])
    assert model["returns_loss"] is False and model["format"] == "torch.export"
    batch = api.upload("batches", files.batches["plain"])["id"]
    missing = api.http.post("/v1/analyses", json={"model_id": model["id"], "batch_id": batch})
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "loss_required"
    created = api.http.post(
        "/v1/analyses",
        json={
            "model_id": model["id"],
            "batch_id": batch,
            "loss": "cross_entropy",
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        },
    )
    assert created.status_code == 202, created.text
    assert created.headers["location"] == f"/v1/analyses/{created.json()['id']}"
    assert api.wait(created.json()["id"])["status"] == "succeeded"
    api.close()
