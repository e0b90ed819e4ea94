"""Run ingestion over the real stack (uvicorn, PostgreSQL, Redis, Celery workers): formats, dedupe, errors, webhook."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from .conftest import Stack, admin
from .receiver import Receiver
from .test_audits import verify

LAYERS = [{"name": f"net.{i}", "type": "Linear", "num_parameters": 100 * (i + 1)} for i in range(4)]
METRICS = ["grad_norm", "grad_max_abs", "nonfinite", "weight_norm", "update_norm"]


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.key}"}, timeout=60) as client:
        yield client


def new_run(http: httpx.Client, **extra: Any) -> dict[str, Any]:
    response = http.post("/v1/runs", json={"name": "test-run", "layers": LAYERS, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def columns(first_step: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """Healthy-looking values: (n, L) float32 per metric, weight/update sampled every 10th step."""
    rng = np.random.default_rng(seed)
    grad = (0.5 + 0.1 * rng.random((n, len(LAYERS)))).astype(np.float32)
    sampled = (np.arange(first_step, first_step + n) % 10 == 0)[:, None]
    weight = np.where(sampled, 10.0, np.nan).astype(np.float32) * np.ones((1, len(LAYERS)), np.float32)
    return {
        "grad_norm": grad,
        "grad_max_abs": grad / 4,
        "nonfinite": np.zeros_like(grad),
        "weight_norm": weight,
        "update_norm": weight * 1e-3,
    }


def batch_body(seq: int, first_step: int, n: int, seed: int = 0, binary: bool = False) -> dict[str, Any]:
    cols = columns(first_step, n, seed)
    encode = (
        (lambda a: a.astype("<f4").tobytes())
        if binary
        else (lambda a: [[None if np.isnan(v) else float(v) for v in row] for row in a])
    )
    return {
        "seq": seq,
        "steps": list(range(first_step, first_step + n)),
        "loss": [2.0 / (1 + 0.01 * s) for s in range(first_step, first_step + n)],
        "lr": [0.01] * n,
        "metrics": {name: encode(values) for name, values in cols.items()},
    }


def post_logs(
    http: httpx.Client, run_id: str, body: dict[str, Any], fmt: str = "json", gz: bool = False
) -> httpx.Response:
    data = json.dumps(body).encode() if fmt == "json" else msgpack.packb(body, use_bin_type=True)
    headers = {"Content-Type": "application/json" if fmt == "json" else "application/msgpack"}
    if gz:
        data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
    return http.post(f"/v1/runs/{run_id}/logs", content=data, headers=headers)


def test_formats_dedupe_and_layer_history(http: httpx.Client) -> None:
    run = new_run(http)
    assert run["num_layers"] == 4 and run["metrics"] == METRICS and run["webhook_secret"].startswith("whsec_")
    sent = [
        (batch_body(0, 0, 50, seed=0), "json", False),
        (batch_body(1, 50, 50, seed=1, binary=True), "msgpack", False),
        (batch_body(2, 100, 50, seed=2, binary=True), "msgpack", True),
        (batch_body(3, 150, 50, seed=3), "json", True),
    ]
    for body, fmt, gz in sent:
        ack = post_logs(http, run["id"], body, fmt, gz)
        assert ack.status_code == 200, ack.text
        assert ack.json()["stored"] is True
    again = post_logs(http, run["id"], sent[1][0], "msgpack")
    assert again.status_code == 200 and again.json()["stored"] is False
    state = http.get(f"/v1/runs/{run['id']}").json()
    assert state["run_steps"] == 200 and state["batches"] == 4 and state["last_step"] == 199

    history = http.get(f"/v1/runs/{run['id']}/layers/net.2/history", params={"metric": "grad_norm"}).json()
    expected = np.concatenate(
        [
            columns(0, 50, 0)["grad_norm"],
            columns(50, 50, 1)["grad_norm"],
            columns(100, 50, 2)["grad_norm"],
            columns(150, 50, 3)["grad_norm"],
        ]
    )[:, 2]
    assert history["steps"] == list(range(200))
    np.testing.assert_allclose(history["values"], expected, rtol=1e-6)
    weights = http.get(f"/v1/runs/{run['id']}/layers/net.0/history", params={"metric": "weight_norm"}).json()
    assert weights["steps"] == list(range(0, 200, 10))  # unmeasured steps are left out, not zeros

    report = http.get(f"/v1/runs/{run['id']}/report").json()
    assert report["kind"] == "run" and report["health"] == "healthy", report["findings"]
    timeline = report["timeline"]
    assert timeline["steps"][0] == 0 and timeline["steps"][-1] == 199 and len(timeline["steps"]) == 200
    np.testing.assert_allclose(timeline["loss"], [2.0 / (1 + 0.01 * s) for s in range(200)], rtol=1e-6)
    ggn = np.sqrt(
        (
            np.concatenate([columns(f, 50, s)["grad_norm"] for f, s in ((0, 0), (50, 1), (100, 2), (150, 3))]).astype(
                np.float64
            )
            ** 2
        ).sum(axis=1)
    )
    np.testing.assert_allclose(timeline["global_grad_norm"], ggn, rtol=1e-6)
    assert set(timeline["layers"]) == {layer["name"] for layer in LAYERS}
    html = http.get(f"/v1/runs/{run['id']}/report", params={"format": "html"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "<svg" in html.text and "<script" not in html.text


@pytest.mark.parametrize(
    ("mutate", "status", "needle"),
    [
        (lambda b: b.update(steps=[3, 2, 1] + list(range(4, 51))), 422, "strictly increasing"),
        (lambda b: b["metrics"].update(grad_norm=[[1.0] * 3] * 50), 422, "expected (50, 4)"),
        (lambda b: b["metrics"].update(activation_rms=[[1.0] * 4] * 50), 422, "not metrics of this run"),
        (lambda b: b.update(seq=-1), 422, "seq must be an integer"),
        (lambda b: b.update(loss=[1.0]), 422, "loss must be a list of 50"),
        (lambda b: b.update(color="red"), 422, "unknown field"),
        (lambda b: b.pop("steps"), 422, "steps must be a non-empty list"),
        (lambda b: b.update(steps=[float(s) + 0.5 for s in b["steps"]]), 422, "steps must be integers"),
    ],
)
def test_bad_batches_are_4xx_and_leave_the_run_intact(
    http: httpx.Client, mutate: Any, status: int, needle: str
) -> None:
    run = new_run(http)
    assert post_logs(http, run["id"], batch_body(0, 0, 50)).status_code == 200
    body = batch_body(1, 50, 50)
    mutate(body)
    response = post_logs(http, run["id"], body)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]
    assert http.get(f"/v1/runs/{run['id']}").json()["run_steps"] == 50


def test_bad_encodings_and_ownership(http: httpx.Client, stack: Stack) -> None:
    run = new_run(http)
    url = f"/v1/runs/{run['id']}/logs"
    assert http.post(url, content=b"{}", headers={"Content-Type": "text/csv"}).status_code == 415
    assert (
        http.post(
            url, content=b"{}", headers={"Content-Type": "application/json", "Content-Encoding": "br"}
        ).status_code
        == 415
    )
    bad_gzip = http.post(
        url, content=b"not gzip", headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert bad_gzip.status_code == 400 and "gzip" in bad_gzip.json()["error"]["message"]
    assert http.post(url, content=b"{nope", headers={"Content-Type": "application/json"}).status_code == 400
    assert http.post(url, content=b"\xc1", headers={"Content-Type": "application/msgpack"}).status_code == 400
    assert http.post(url, content=b"[1, 2]", headers={"Content-Type": "application/json"}).status_code == 422
    assert http.post("/v1/runs", json={"name": "x", "layers": [{"name": "a"}, {"name": "a"}]}).status_code == 422
    assert http.post("/v1/runs", json={"name": "x", "layers": LAYERS, "metrics": ["colour"]}).status_code == 422
    bad_hook = http.post("/v1/runs", json={"name": "x", "layers": LAYERS, "webhook_url": "ftp://example.com"})
    assert bad_hook.status_code == 422 and "http://" in bad_hook.json()["error"]["message"]

    other = admin(stack.env, "create-project", "runs-other").stdout.strip()
    foreign = {"Authorization": f"Bearer {other}"}
    assert http.get(f"/v1/runs/{run['id']}", headers=foreign).status_code == 404
    assert post_logs(http, run["id"], batch_body(0, 0, 5)).status_code == 200
    stolen = http.post(
        url, content=json.dumps(batch_body(1, 5, 5)), headers={"Content-Type": "application/json", **foreign}
    )
    assert stolen.status_code == 404
    assert http.get(f"/v1/runs/{run['id']}/layers/nope/history").status_code == 404


def test_idempotent_create(http: httpx.Client) -> None:
    body = {"name": "retry", "layers": LAYERS}
    first = http.post("/v1/runs", json=body, headers={"Idempotency-Key": "run-create-1"}).json()
    second = http.post("/v1/runs", json=body, headers={"Idempotency-Key": "run-create-1"}).json()
    assert first["id"] == second["id"]
    other = http.post("/v1/runs", json={**body, "name": "other"}, headers={"Idempotency-Key": "run-create-1"})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused", other.text


def test_webhook_called_once_when_the_run_goes_bad(http: httpx.Client) -> None:
    receiver = Receiver()
    try:
        run = new_run(http, webhook_url=receiver.url)
        assert post_logs(http, run["id"], batch_body(0, 0, 40)).json()["health"] == "healthy"
        bad = batch_body(1, 40, 20)
        bad["loss"][5:] = [float("nan")] * 15
        for row in bad["metrics"]["grad_norm"][5:]:
            row[1] = float("inf")
        for row in bad["metrics"]["nonfinite"][5:]:
            row[1] = 1.0
        ack = post_logs(http, run["id"], bad).json()
        assert ack["health"] in ("error", "critical")
        assert post_logs(http, run["id"], batch_body(2, 60, 20)).status_code == 200
        [hook] = receiver.wait_for(1)
        assert verify(run["webhook_secret"], hook.headers["x-gradhealth-signature"], hook.body)
        payload = json.loads(hook.body)
        assert payload["event"] == "run.unhealthy" and payload["run"]["id"] == run["id"]
        non_finite = [f for f in payload["findings"] if f["rule"] == "non_finite"]
        assert non_finite and non_finite[0]["step"] == 45 and "net.1" in non_finite[0]["layers"]
        assert payload["report_url"] == f"{http.base_url}/v1/runs/{run['id']}/report"  # absolute: a link to click
        assert http.get(payload["report_url"]).status_code == 200
        # Exactly one notification: its delivery row commits with the event (outbox), and the later
        # batch created none, so no second POST can ever be sent.
        deliveries = http.get(f"/v1/runs/{run['id']}/deliveries").json()
        assert deliveries["count"] == 1 and deliveries["data"][0]["ok"] is True
        assert not deliveries["data"][0]["pending"] and len(receiver.requests) == 1
    finally:
        receiver.close()
