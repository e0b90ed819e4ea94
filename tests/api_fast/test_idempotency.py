"""One Idempotency-Key contract for every POST that takes it (api/idempotency.py), tested on each of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from gradhealth.api.idempotency import IDEMPOTENCY_DOC, REPLAYED_HEADER
from gradhealth.store.task_names import RUN_ANALYSIS

from .conftest import Project


@dataclass(frozen=True)
class Endpoint:
    """An idempotent POST: where, what it answers, a valid body and the same body changed in one field."""

    path: str
    status: int
    body: Callable[[Project], dict[str, Any]]
    changed: str


def analysis_body(project: Project) -> dict[str, Any]:
    model_id, batch_id = project.seed_inputs()
    return {"model_id": model_id, "batch_id": batch_id, "loss": "mse"}


def run_body(_: Project) -> dict[str, Any]:
    return {"name": "nightly", "layers": [{"name": "fc1"}, {"name": "fc2"}], "config": {"lr": 0.1}}


ENDPOINTS = [
    Endpoint("/v1/analyses", 202, analysis_body, "loss"),
    Endpoint("/v1/runs", 201, run_body, "name"),
]
CHANGES = {"loss": "cross_entropy", "name": "weekly"}
IDS = [endpoint.path for endpoint in ENDPOINTS]


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=IDS)
def test_the_same_key_and_body_answers_the_first_resource(project: Project, endpoint: Endpoint) -> None:
    body = endpoint.body(project)
    first = project.post(endpoint.path, body, headers=keyed("retry-1"))
    again = project.post(endpoint.path, body, headers=keyed("retry-1"))
    assert first.status_code == again.status_code == endpoint.status, again.text
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    assert REPLAYED_HEADER.lower() not in first.headers and again.headers[REPLAYED_HEADER] == "true"
    assert first.headers["location"] == f"{endpoint.path}/{first.json()['id']}"
    assert project.get(endpoint.path).json()["count"] == 1
    assert len(project.tasks.named(RUN_ANALYSIS)) == (1 if endpoint.path == "/v1/analyses" else 0)  # queued once


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=IDS)
def test_the_same_key_with_another_body_is_422_naming_the_difference(project: Project, endpoint: Endpoint) -> None:
    body = endpoint.body(project)
    assert project.post(endpoint.path, body, headers=keyed("retry-2")).status_code == endpoint.status
    other = project.post(endpoint.path, body | {endpoint.changed: CHANGES[endpoint.changed]}, headers=keyed("retry-2"))
    assert other.status_code == 422, other.text
    error = other.json()["error"]
    assert error["code"] == "idempotency_key_reused" and "send a new key for a new request" in error["message"]
    stored_as = "options" if endpoint.changed == "loss" else endpoint.changed  # the loss is stored in the options
    assert error["detail"] == {"differs": [stored_as]} and stored_as in error["message"]
    assert project.get(endpoint.path).json()["count"] == 1


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=IDS)
def test_without_a_key_each_post_creates_one(project: Project, endpoint: Endpoint) -> None:
    body = endpoint.body(project)
    ids = {project.post(endpoint.path, body).json()["id"] for _ in range(2)}
    assert len(ids) == 2 and project.get(endpoint.path).json()["count"] == 2


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=IDS)
def test_keys_belong_to_one_project(project: Project, other: Project, endpoint: Endpoint) -> None:
    mine = project.post(endpoint.path, endpoint.body(project), headers=keyed("shared"))
    theirs = other.post(endpoint.path, endpoint.body(other), headers=keyed("shared"))
    assert theirs.status_code == endpoint.status and theirs.json()["id"] != mine.json()["id"]
    assert REPLAYED_HEADER.lower() not in theirs.headers


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=IDS)
def test_an_overlong_key_is_422(project: Project, endpoint: Endpoint) -> None:
    response = project.post(endpoint.path, endpoint.body(project), headers=keyed("k" * 129))
    assert response.status_code == 422 and response.json()["error"]["message"].startswith("header.idempotency-key:")


def test_the_contract_is_documented_once_on_every_endpoint_that_takes_a_key(project: Project) -> None:
    schema = project.http.get("/openapi.json").json()
    taking = {
        (path, method): parameter["description"]
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        for parameter in operation.get("parameters", [])
        if parameter["name"].lower() == "idempotency-key"
    }
    assert set(taking) == {(endpoint.path, "post") for endpoint in ENDPOINTS}
    assert set(taking.values()) == {IDEMPOTENCY_DOC} and "422" in IDEMPOTENCY_DOC
