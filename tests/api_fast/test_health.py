"""Endpoints without a key: liveness, and the analyses gauges of /metrics read from the database."""

from __future__ import annotations

from .conftest import Project


def queued_gauge(project: Project) -> float:
    """The queued-analyses gauge of /metrics (no key needed), counted from the database."""
    text = project.http.get("/metrics").text
    line = next(line for line in text.splitlines() if line.startswith('gradhealth_analyses{status="queued"}'))
    return float(line.split()[-1])


def test_metrics_count_analyses_by_status_from_the_database(project: Project) -> None:
    before = queued_gauge(project)
    model_id, batch_id = project.seed_inputs()
    project.post("/v1/analyses", {"model_id": model_id, "batch_id": batch_id})
    assert queued_gauge(project) == before + 1


def test_liveness_needs_no_key(project: Project) -> None:
    assert project.http.get("/healthz").json() == {"status": "ok"}
