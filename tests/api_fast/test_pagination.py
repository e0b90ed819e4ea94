"""Every list answers {data, count} to limit/offset, and the SDK's pages walk them (Client over the app in-process)."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from gradhealth.sdk import Client
from gradhealth.store.db import session_scope
from gradhealth.store.models import AuditRun, WebhookDelivery, utcnow

from .conftest import Project
from .routes import UNKNOWN, lists

LAYERS = [{"name": "fc1"}]


class InProcess(httpx.BaseTransport):
    """An httpx transport that hands each request to the app through the session's TestClient."""

    def __init__(self, http: TestClient) -> None:
        self.http = http

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.http.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.read()
        )
        return httpx.Response(answer.status_code, headers=list(answer.headers.items()), content=answer.content)


def sdk(project: Project) -> Client:
    """The SDK's Client, talking to the in-process app with the project's read key."""
    http = httpx.Client(transport=InProcess(project.http))
    return Client(api_key=project.keys["read"], base_url="http://testserver", http_client=http, max_retries=0)


def make_runs(project: Project, count: int) -> list[str]:
    return [project.post("/v1/runs", {"name": f"run-{i}", "layers": LAYERS}).json()["id"] for i in range(count)]


def test_every_list_of_a_new_project_is_an_empty_page(project: Project) -> None:
    for path in lists(project.http.app):  # type: ignore[arg-type]
        if UNKNOWN not in path:
            scope = "admin" if path.startswith("/v1/admin/") else "read"  # the deletion log is an admin view
            assert project.get(path, scope).json() == {"data": [], "count": 0}, path


def test_pages_cover_every_row_once_and_past_the_end_is_empty(project: Project) -> None:
    made = make_runs(project, 5)
    seen = []
    for offset in range(0, 6, 2):
        page = project.get("/v1/runs", params={"limit": 2, "offset": offset}).json()
        assert page["count"] == 5 and len(page["data"]) == min(2, 5 - offset)
        seen += [run["id"] for run in page["data"]]
    assert sorted(seen) == sorted(made) and len(set(seen)) == 5
    assert project.get("/v1/runs", params={"offset": 2**31 - 1}).json() == {"data": [], "count": 5}


def test_the_sdk_walks_every_page_of_runs_and_analyses(project: Project) -> None:
    made = make_runs(project, 5)
    model_id, batch_id = project.seed_inputs()
    analyses = [
        project.post("/v1/analyses", {"model_id": model_id, "batch_id": batch_id}).json()["id"] for _ in range(3)
    ]
    client = sdk(project)
    first = client.runs.list(limit=2)
    assert len(first.data) == 2 and first.count == 5 and first.has_next_page()
    assert sorted(run.id for run in first) == sorted(made)
    assert [a.id for a in client.analyses.list(limit=2)] == analyses[::-1]  # newest first
    assert [m.id for m in client.models.list(limit=1)] == [model_id]


def seed_audit_runs(project: Project, audit_id: str, count: int) -> None:
    """Finished audit runs with one delivery each, as the scheduler and the outbox would leave them."""
    with session_scope(project.settings) as session:
        for index in range(count):
            run = AuditRun(audit_id=audit_id, slot=utcnow().replace(year=2000 + index), trigger="manual")
            session.add(run)
            session.flush()
            session.add(WebhookDelivery(audit_id=audit_id, run_id=run.id, attempt=1, url="http://127.0.0.1:9/"))


@pytest.mark.parametrize("limit", [1, 2, 50])
def test_the_sdk_pages_audits_their_history_and_deliveries(project: Project, limit: int) -> None:
    model_id, batch_id = project.seed_inputs()
    audit = {"name": "nightly", "schedule": "0 3 * * *", "model": model_id, "batch_id": batch_id}
    audit_id = project.post("/v1/audits", audit).json()["id"]
    seed_audit_runs(project, audit_id, 3)
    client = sdk(project)
    assert [a.id for a in client.audits.list(limit=limit)] == [audit_id]
    history = client.audits.history(audit_id, limit=limit)
    assert history.count == 3 and len(history.data) == min(limit, 3) and len(list(history)) == 3
    deliveries = client.audits.deliveries(audit_id, limit=limit)
    assert deliveries.count == 3 and len({d.id for d in deliveries}) == 3
