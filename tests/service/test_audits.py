"""Audits over the real stack: ticks at chosen times, name:latest, regression, signed webhooks, retries."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import gradhealth

from .artifacts import Files
from .client import Api
from .conftest import Stack
from .receiver import Receiver

DAILY = "0 3 * * *"


def verify(secret: str, header: str, body: bytes, tolerance: float = 300.0) -> bool:
    """What a receiver does (docs/webhooks.md): recompute the HMAC over f"{t}.{body}", compare in constant time."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(parts["t"])) < tolerance and hmac.compare_digest(expected, parts["v1"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def upload_named(api: Api, path: Path, name: str) -> dict[str, Any]:
    with open(path, "rb") as handle:
        response = api.http.post("/v1/models", params={"name": name}, files={"file": handle})
    assert response.status_code in (200, 201), response.text
    return response.json()


def create_audit(api: Api, **body: Any) -> dict[str, Any]:
    response = api.http.post("/v1/audits", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def tick(api: Api, audit_id: str, now: str) -> list[str]:
    response = api.http.post("/v1/audits/tick", json={"now": now, "audit_id": audit_id})
    assert response.status_code == 200, response.text
    return response.json()


def finished_run(api: Api, audit_id: str, run_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll the history until the run is no longer running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = {r["id"]: r for r in api.http.get(f"/v1/audits/{audit_id}/history").json()["data"]}
        if runs[run_id]["status"] != "running":
            return runs[run_id]
        time.sleep(0.2)
    raise AssertionError(f"audit run {run_id} still running after {timeout} s")


def test_scheduled_audit_detects_a_regression_in_the_newest_version(
    stack: Stack, files: Files, receiver: Receiver
) -> None:
    api = stack.client()
    name = f"audited-{secrets.token_hex(3)}"
    v1 = upload_named(api, files.models["relu_mlp"], name)
    batch = api.upload("batches", files.batches["relu_mlp"])["id"]
    audit = create_audit(
        api, name="nightly", schedule=DAILY, model=f"{name}:latest", batch_id=batch, webhook_url=receiver.url
    )
    secret = audit.pop("webhook_secret")
    assert secret.startswith("whsec_") and "webhook_secret" not in api.http.get(f"/v1/audits/{audit['id']}").json()

    first_slot = audit["next_run_at"]
    assert first_slot.endswith("03:00:00Z"), first_slot
    [first] = tick(api, audit["id"], first_slot)
    base = finished_run(api, audit["id"], first)
    assert (base["status"], base["model_id"], base["regressed"], base["notify"]) == ("succeeded", v1["id"], None, False)

    v2 = upload_named(api, files.models["relu_mlp_scaled"], name)
    assert v2["version"] == v1["version"] + 1
    second_slot = api.http.get(f"/v1/audits/{audit['id']}").json()["next_run_at"]
    assert second_slot > first_slot
    with ThreadPoolExecutor(4) as pool:  # concurrent ticks of one slot, plus a repeat: one run
        started = [r for batch_ in pool.map(lambda _: tick(api, audit["id"], second_slot), range(4)) for r in batch_]
    assert len(started) == 1 and tick(api, audit["id"], second_slot) == []
    run = finished_run(api, audit["id"], started[0])
    assert run["model_id"] == v2["id"] and run["previous_run_id"] == first and run["regressed"] is True
    assert "net.24" in {c["layer"] for c in run["comparison"]["layer_changes"] if c["worse"]}

    [delivery] = receiver.wait_for(1)
    assert verify(secret, delivery.headers["x-gradhealth-signature"], delivery.body)
    assert not verify("whsec_wrong", delivery.headers["x-gradhealth-signature"], delivery.body)
    payload = json.loads(delivery.body)
    assert payload["event"] == "audit.regression" and payload["run"]["id"] == started[0]
    assert "net.24" in {w["layer"] for w in payload["worse_layers"]}
    assert payload["findings"] and all(f["remediation"] for f in payload["findings"])
    assert payload["reasons"] and payload["analysis_id"] == run["analysis_id"]

    with gradhealth.Client(base_url=stack.base_url, api_key=stack.key) as client:
        same = client.analyses.compare(base["analysis_id"], run["analysis_id"])
        assert same.regressed and "net.24" in {c.layer for c in same.layer_changes if c.worse}
    history = api.http.get(f"/v1/audits/{audit['id']}/history").json()
    assert history["count"] == 2 and [r["id"] for r in history["data"]] == [started[0], first]
    deliveries = api.http.get(f"/v1/audits/{audit['id']}/deliveries").json()
    assert [(d["attempt"], d["ok"], d["status_code"]) for d in deliveries["data"]] == [(1, True, 200)]


def test_failing_receiver_gets_retries_and_every_attempt_is_logged(
    stack: Stack, files: Files, receiver: Receiver
) -> None:
    api = stack.client()
    receiver.codes = [500, 500]
    name = f"sick-{secrets.token_hex(3)}"
    with gradhealth.Client(base_url=stack.base_url, api_key=stack.key) as client:  # the SDK, one call each
        model = client.models.upload(files.models["deep_sigmoid_mlp"], name=name, tags=["nightly"])
        batch = client.batches.upload(files.batches["deep_sigmoid_mlp"])
        assert (model.name, model.version, model.tags) == (name, 1, ["nightly"])
        audit = client.audits.create(
            name="on findings",
            schedule=DAILY,
            model=f"{name}:1",
            batch_id=batch.id,
            webhook_url=receiver.url,
            notify_on="warning",  # vanishing gradients (an error) on the first run is enough
        )
        assert audit.webhook_secret and client.audits.retrieve(audit.id).webhook_secret is None
        started = client.audits.run(audit.id)  # run now, outside the schedule
        assert started.trigger == "manual" and started.status == "running"
        run = finished_run(api, audit.id, started.id)
        assert run["status"] == "succeeded" and run["notify"] is True

        received = receiver.wait_for(3)
        assert all(verify(audit.webhook_secret, r.headers["x-gradhealth-signature"], r.body) for r in received)
        deadline = time.monotonic() + 30
        while not (log := client.audits.deliveries(audit.id).data)[0].ok:
            assert time.monotonic() < deadline, log
            time.sleep(0.1)
        assert sorted((d.attempt, d.ok, d.status_code) for d in log) == [
            (1, False, 500),
            (2, False, 500),
            (3, True, 200),
        ]
        assert "HTTP 500" in (next(d for d in log if d.attempt == 1).error or "")
        assert client.audits.pause(audit.id).next_run_at is None
        assert client.audits.resume(audit.id).status == "active"
    # Delivered: no more attempts. A retry exists only as a pending outbox row, and none is left.
    rows = api.http.get(f"/v1/audits/{audit.id}/deliveries").json()["data"]
    assert not any(row["pending"] for row in rows) and len(receiver.requests) == 3


def test_pause_resume_and_clear_errors(stack: Stack, files: Files) -> None:
    api = stack.client()
    model = api.upload("models", files.models["relu_mlp"])["id"]  # a fixed version, by id
    batch = api.upload("batches", files.batches["relu_mlp"])["id"]
    base = {"name": "a", "model": model, "batch_id": batch}

    bad = api.http.post("/v1/audits", json={**base, "schedule": "every night"})
    assert bad.status_code == 422 and "5 fields" in bad.json()["error"]["message"]
    bad = api.http.post("/v1/audits", json={**base, "schedule": "61 * * * *"})
    assert bad.status_code == 422 and "not a valid cron" in bad.json()["error"]["message"]
    unknown = api.http.post("/v1/audits", json={**base, "schedule": DAILY, "model": "ghost:latest"})
    assert unknown.status_code == 404 and "no model named 'ghost'" in unknown.json()["error"]["message"]
    bad_hook = api.http.post("/v1/audits", json={**base, "schedule": DAILY, "webhook_url": "ftp://x"})
    assert bad_hook.status_code == 422 and "http" in bad_hook.json()["error"]["message"]

    audit = create_audit(api, **base, schedule=DAILY)
    slot = audit["next_run_at"]
    paused = api.http.patch(f"/v1/audits/{audit['id']}", json={"status": "paused"}).json()
    assert paused["status"] == "paused" and paused["next_run_at"] is None
    assert tick(api, audit["id"], slot) == []
    resumed = api.http.patch(f"/v1/audits/{audit['id']}", json={"status": "active"}).json()
    assert resumed["next_run_at"] == slot
    assert api.http.get(f"/v1/audits/{audit['id']}/history").json()["count"] == 0
    assert api.http.get("/v1/audits").json()["count"] >= 1
    assert api.http.get("/v1/audits/00000000-0000-0000-0000-000000000000/history").status_code == 404
    reader = stack.client(key="")
    assert reader.http.post("/v1/audits/tick", json={}).status_code == 401
