"""POST /v1/analyses with batch_ids: exactly one batch field, bounded lists, owned and alike batches (issue 13)."""

from __future__ import annotations

import json
import secrets

from gradhealth.store import analyses
from gradhealth.store.db import session_scope
from gradhealth.store.models import Batch
from gradhealth.store.task_names import RUN_ANALYSIS

from .conftest import MAX_JSON_BYTES, Project
from .test_validation import error

SHAPES = {"inputs": [8, 4], "targets": [8]}


def seed_batch(project: Project, shapes: dict[str, list[int]] = SHAPES) -> str:
    """A batch row as an upload would leave it, with these shapes."""
    with session_scope(project.settings) as session:
        batch = Batch(project_id=project.id, sha256=project.stored_blob(), size_bytes=16, shapes=json.dumps(shapes))
        session.add(batch)
        session.flush()
        return batch.id


def test_several_batches_are_stored_in_order_and_claimed_with_every_key(project: Project) -> None:
    model_id, _ = project.seed_inputs()
    ids = [seed_batch(project), seed_batch(project, {"inputs": [3, 4], "targets": [3]}), seed_batch(project)]
    created = project.post("/v1/analyses", {"model_id": model_id, "batch_ids": ids})
    assert created.status_code == 202, created.text
    body = created.json()
    assert body["batch_ids"] == ids and body["batch_id"] == ids[0]
    assert project.get(f"/v1/analyses/{body['id']}").json()["batch_ids"] == ids
    assert project.tasks.named(RUN_ANALYSIS) == [body["id"]]
    claim = analyses.claim(project.settings, body["id"], "fast")
    assert claim is not None and len(claim.batch_keys) == 3 and claim.batch_key == claim.batch_keys[0]


def test_one_batch_still_reads_as_a_list_of_one(project: Project) -> None:
    model_id, batch_id = project.seed_inputs()
    body = project.post("/v1/analyses", {"model_id": model_id, "batch_id": batch_id}).json()
    assert body["batch_ids"] == [batch_id]


def test_both_or_neither_batch_field_is_422(project: Project) -> None:
    model_id, batch_id = project.seed_inputs()
    for body in ({"model_id": model_id}, {"model_id": model_id, "batch_id": batch_id, "batch_ids": [batch_id]}):
        found = error(project.post("/v1/analyses", body), 422, "validation_error")
        assert "exactly one of batch_id" in found["message"]
    error(project.post("/v1/analyses", {"model_id": model_id, "batch_ids": []}), 422, "validation_error")
    assert project.tasks.named(RUN_ANALYSIS) == []


def test_more_than_sixteen_batches_is_422(project: Project) -> None:
    model_id, batch_id = project.seed_inputs()
    found = error(
        project.post("/v1/analyses", {"model_id": model_id, "batch_ids": [batch_id] * 17}), 422, "validation_error"
    )
    assert "batch_ids" in json.dumps(found)


def test_a_million_batch_ids_is_refused_before_parsing(project: Project) -> None:
    model_id, batch_id = project.seed_inputs()
    huge = {"model_id": model_id, "batch_ids": [batch_id] * 1_000_000}
    response = project.post("/v1/analyses", huge)
    assert response.status_code == 413, response.text
    assert len(json.dumps(huge)) > MAX_JSON_BYTES  # the body limit answers before the list is built
    assert project.tasks.named(RUN_ANALYSIS) == []


def test_an_overlong_batch_id_is_422(project: Project) -> None:
    model_id, _ = project.seed_inputs()
    error(project.post("/v1/analyses", {"model_id": model_id, "batch_ids": ["x" * 10_000]}), 422, "validation_error")


def test_an_unknown_batch_is_404_naming_it(project: Project) -> None:
    model_id, _ = project.seed_inputs()
    good = seed_batch(project)
    found = error(
        project.post("/v1/analyses", {"model_id": model_id, "batch_ids": [good, "nope-123"]}), 404, "not_found"
    )
    assert "nope-123" in found["message"]


def test_another_projects_batch_is_404_naming_it(project: Project, other: Project) -> None:
    model_id, _ = project.seed_inputs()
    theirs = seed_batch(other)
    found = error(
        project.post("/v1/analyses", {"model_id": model_id, "batch_ids": [seed_batch(project), theirs]}),
        404,
        "not_found",
    )
    assert theirs in found["message"]
    assert project.tasks.named(RUN_ANALYSIS) == []


def test_a_batch_shaped_unlike_the_first_is_422_naming_it(project: Project) -> None:
    model_id, _ = project.seed_inputs()
    first, odd = seed_batch(project), seed_batch(project, {"inputs": [8, 5], "targets": [8]})
    found = error(
        project.post("/v1/analyses", {"model_id": model_id, "batch_ids": [first, odd]}), 422, "batch_shape_mismatch"
    )
    assert odd in found["message"] and found["detail"]["batch_id"] == odd


def test_a_batch_listed_twice_is_422(project: Project) -> None:
    model_id, _ = project.seed_inputs()
    b = seed_batch(project)
    found = error(project.post("/v1/analyses", {"model_id": model_id, "batch_ids": [b, b]}), 422, "duplicate_batch")
    assert b in found["message"]


def test_idempotency_compares_the_batch_list(project: Project) -> None:
    model_id, _ = project.seed_inputs()
    a, b, c = seed_batch(project), seed_batch(project), seed_batch(project)
    key = {"Idempotency-Key": secrets.token_hex(8)}
    first = project.post("/v1/analyses", {"model_id": model_id, "batch_ids": [a, b]}, headers=key)
    again = project.post("/v1/analyses", {"model_id": model_id, "batch_ids": [a, b]}, headers=key)
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    found = error(
        project.post("/v1/analyses", {"model_id": model_id, "batch_ids": [a, c]}, headers=key),
        422,
        "idempotency_key_reused",
    )
    assert "batch_ids" in found["detail"]["differs"]


def test_openapi_documents_batch_ids(project: Project) -> None:
    schema = project.http.get("/openapi.json").json()["components"]["schemas"]["AnalysisCreate"]
    assert schema["properties"]["batch_ids"]["anyOf"][0]["maxItems"] == 16
    assert "batch_ids" in schema["properties"] and "batch_id" not in schema.get("required", [])
