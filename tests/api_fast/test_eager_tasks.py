"""The eager runner executes what a worker would, in-process: an audit run finishes, its webhook is queued once."""

from __future__ import annotations

from collections.abc import Callable

from gradhealth.report import Finding, ModelInfo, Report
from gradhealth.store import analyses
from gradhealth.store.task_names import DELIVER_WEBHOOK, RUN_ANALYSIS
from gradhealth.workers import audit_runs

from .conftest import Project

HOOK = "http://127.0.0.1:9/hook"


def report(analysis_id: str) -> Report:
    """A small report with one error finding, as the engine would store it."""
    finding = Finding(rule="vanishing_gradient", severity="error", title="t", message="m", confidence=1.0)
    model = ModelInfo(format="torch.export", num_parameters=1, num_layers=1, dtype="float32", device="cpu")
    return Report(id=analysis_id, health="error", summary="one error", model=model, findings=[finding])


def worker(project: Project, succeed: bool) -> Callable[[str], object]:
    """RUN_ANALYSIS as the worker runs it, minus the model: claim, store the outcome, finish the audit run."""

    def run(analysis_id: str) -> object:
        claim = analyses.claim(project.settings, analysis_id, "eager")
        assert claim is not None
        if succeed:
            analyses.complete(project.settings, claim, report(analysis_id).model_dump_json(), "error", 0.1, None)
        else:
            analyses.fail(project.settings, claim, "invalid_input", "the model failed on this batch")
        audit_runs.finalize_for_analysis(project.settings, analysis_id, project.tasks)
        return True

    return run


def start_audit(project: Project) -> tuple[str, dict[str, object]]:
    model_id, batch_id = project.seed_inputs()
    body = {"name": "n", "schedule": "0 3 * * *", "model": model_id, "batch_id": batch_id, "webhook_url": HOOK}
    audit_id = project.post("/v1/audits", body | {"notify_on": "error"}).json()["id"]
    started = project.post(f"/v1/audits/{audit_id}/run")
    assert started.status_code == 202, started.text
    return audit_id, project.get(f"/v1/audits/{audit_id}/history").json()["data"][0]


def test_a_finished_audit_run_queues_its_webhook_once(project: Project) -> None:
    project.tasks.handlers[RUN_ANALYSIS] = worker(project, succeed=True)
    audit_id, run = start_audit(project)
    assert run["status"] == "succeeded" and run["notify"] is True and run["health"] == "error"
    deliveries = project.get(f"/v1/audits/{audit_id}/deliveries").json()
    assert deliveries["count"] == 1 and deliveries["data"][0]["pending"] is True
    assert project.tasks.named(DELIVER_WEBHOOK) == [deliveries["data"][0]["id"]]
    assert project.get(f"/v1/analyses/{run['analysis_id']}/report").json()["findings"][0]["severity"] == "error"
    audit_runs.finalize_pending(project.settings, project.tasks)  # a recovery sweep afterwards changes nothing
    assert len(project.tasks.named(DELIVER_WEBHOOK)) == 1


def test_a_failed_analysis_fails_its_audit_run_and_its_report_is_409(project: Project) -> None:
    project.tasks.handlers[RUN_ANALYSIS] = worker(project, succeed=False)
    audit_id, run = start_audit(project)
    assert run["status"] == "failed" and "the model failed on this batch" in run["error_message"]
    assert project.get(f"/v1/audits/{audit_id}/deliveries").json()["count"] == 0
    response = project.get(f"/v1/analyses/{run['analysis_id']}/report")
    assert response.status_code == 409 and response.json()["error"]["code"] == "analysis_failed"
