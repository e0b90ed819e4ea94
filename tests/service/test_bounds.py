"""Out-of-range numbers are a 4xx, never a 500, on both databases; timestamps carry UTC; 405 lists every method."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from .conftest import Embedded, Stack

INT64_OVER = 2**63
LIST_PATHS = [
    "/v1/models",
    "/v1/analyses",
    "/v1/audits",
    "/v1/runs",
    "/v1/audits/00000000-0000-0000-0000-000000000000/history",
    "/v1/audits/00000000-0000-0000-0000-000000000000/deliveries",
]
LAYERS = [{"name": "fc1", "type": "Linear", "num_parameters": 10}, {"name": "fc2", "type": "Linear"}]


@pytest.fixture(params=["postgresql", "sqlite"], scope="module")
def http(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """A client of the distributed stack (PostgreSQL) or of `gradhealth serve` (SQLite)."""
    server: Stack | Embedded = request.getfixturevalue("stack" if request.param == "postgresql" else "embedded")
    headers = {"Authorization": f"Bearer {server.key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as client:
        yield client


def assert_error(response: httpx.Response, status: int = 422) -> dict[str, Any]:
    """The status and the one error shape."""
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"code", "message", "detail"}
    return body


def new_run(http: httpx.Client) -> dict[str, Any]:
    response = http.post("/v1/runs", json={"name": "bounds", "layers": LAYERS, "metrics": ["grad_norm"]})
    assert response.status_code == 201, response.text
    return response.json()


def post_batch(http: httpx.Client, run_id: str, **fields: Any) -> httpx.Response:
    body = {"seq": 0, "steps": [0, 1], "metrics": {"grad_norm": [[1.0, 2.0], [1.0, 2.0]]}, **fields}
    return http.post(f"/v1/runs/{run_id}/logs", content=json.dumps(body), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("path", LIST_PATHS)
@pytest.mark.parametrize("offset", [INT64_OVER, 2**64 + 5, 10**30])
def test_huge_offsets_and_limits_are_422(http: httpx.Client, path: str, offset: int) -> None:
    assert_error(http.get(path, params={"offset": offset}))
    assert_error(http.get(path, params={"limit": offset}))
    assert_error(http.get(path, params={"offset": -1}))


@pytest.mark.parametrize("path", LIST_PATHS[:4])
def test_the_largest_documented_offset_is_an_empty_page(http: httpx.Client, path: str) -> None:
    spec = http.get("/openapi.json").json()
    (param,) = [p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "offset"]
    response = http.get(path, params={"offset": param["schema"]["maximum"]})
    assert response.status_code == 200, response.text
    page = response.json()
    assert (page if isinstance(page, list) else page["data"]) == []


@pytest.mark.parametrize(
    "fields",
    [
        {"seq": INT64_OVER},
        {"seq": 2**64},
        {"dropped": INT64_OVER},
        {"seq": True},
        {"dropped": False},
        {"steps": [0, INT64_OVER]},
        {"steps": [2**64 - 1]},
        {"steps": [True, 2]},
        {"loss": [10**400, 1.0]},
        {"lr": [1.0, -(10**400)]},
        {"metrics": {"grad_norm": [[10**400, 1.0], [1.0, 2.0]]}},
        {"metrics": {"grad_norm": [[1, 2], [3, 10**400]]}},
    ],
    ids=lambda f: json.dumps(f)[:40],
)
def test_out_of_range_log_batches_are_422_and_leave_the_run_intact(http: httpx.Client, fields: dict[str, Any]) -> None:
    run = new_run(http)
    assert_error(post_batch(http, run["id"], **fields))
    assert http.get(f"/v1/runs/{run['id']}").json()["batches"] == 0
    assert post_batch(http, run["id"]).status_code == 200


def test_dropped_steps_saturate_instead_of_overflowing(http: httpx.Client) -> None:
    run = new_run(http)
    spec = http.get("/openapi.json").json()
    most = spec["components"]["schemas"]["LogBatchBody"]["properties"]["dropped"]["maximum"]
    for seq in range(3):
        response = post_batch(http, run["id"], seq=seq, steps=[2 * seq, 2 * seq + 1], dropped=most)
        assert response.status_code == 200, response.text
    assert http.get(f"/v1/runs/{run['id']}").json()["dropped_steps"] == 2**63 - 1


@pytest.mark.parametrize("bad", [False, True, 2**63, -1, 1.5, "10"])
def test_layer_num_parameters_must_be_a_real_integer(http: httpx.Client, bad: object) -> None:
    layers = [{"name": "fc", "num_parameters": bad}]
    assert_error(http.post("/v1/runs", json={"name": "strict", "layers": layers}))


def test_infinite_optimizer_settings_are_422(http: httpx.Client) -> None:
    body = '{"model_id": "m", "batch_id": "b", "optimizer": {"name": "sgd", "lr": Infinity}}'
    assert_error(http.post("/v1/analyses", content=body, headers={"Content-Type": "application/json"}))


@pytest.mark.parametrize("now", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00"])
def test_tick_times_at_the_ends_of_the_calendar_are_422(http: httpx.Client, now: str) -> None:
    assert_error(http.post("/v1/audits/tick", json={"now": now}))


def test_run_timestamps_are_utc_date_times(http: httpx.Client) -> None:
    run = new_run(http)
    listed = http.get("/v1/runs").json()
    report = http.get(f"/v1/runs/{run['id']}/report").json()
    assert listed["count"] >= 1 and len(listed["data"]) >= 1
    for value in (run["created_at"], run["updated_at"], listed["data"][0]["created_at"], report["created_at"]):
        parsed = datetime.fromisoformat(value)
        assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0, value


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/audits/x", {"GET", "PATCH"}),
        ("PUT", "/v1/runs", {"GET", "POST"}),
        ("DELETE", "/v1/models", {"GET", "POST"}),
        ("GET", "/v1/runs/x/logs", {"POST"}),
        ("HEAD", "/v1/runs", {"GET", "POST"}),
    ],
)
def test_405_allow_lists_every_method_of_the_path(
    http: httpx.Client, method: str, path: str, allowed: set[str]
) -> None:
    response = http.request(method, path)
    if method == "HEAD":  # no body
        assert response.status_code == 405
    else:
        assert_error(response, 405)
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed
