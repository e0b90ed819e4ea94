"""Webhook SSRF on the real stack: internal targets are a 422 at creation and refused again when sending."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from gradhealth.store.db import session_scope
from gradhealth.store.models import TrainingRun
from sqlalchemy import update

from .artifacts import Files
from .conftest import Stack
from .procs import Proc, free_port, wait_ready
from .receiver import Receiver
from .test_runs_api import LAYERS, batch_body, post_logs

REFUSED_FORMS = [
    "http://127.0.0.1:{port}/hook",
    "http://localhost:{port}/hook",
    "http://127.1:{port}/hook",
    "http://0x7f000001:{port}/hook",
    "http://2130706433:{port}/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/hook",
    "http://[::1]:22/",
    "http://[::ffff:127.0.0.1]:{port}/hook",
    "http://user:pw@127.0.0.1:{port}/hook",
    "https://user:pw@example.com/hook",
]


@pytest.fixture(scope="module")
def closed_api(stack: Stack) -> Iterator[str]:
    """A second API on the same database, without GRADHEALTH_WEBHOOK_ALLOW_HOSTS: the default deployment."""
    env = {k: v for k, v in stack.env.items() if k != "GRADHEALTH_WEBHOOK_ALLOW_HOSTS"}
    port = free_port()
    proc = Proc("api_closed", ["api", "--host", "127.0.0.1", "--port", str(port)], env, stack.root)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_every_internal_form_is_a_422_without_the_allow_list(
    stack: Stack, closed_api: str, files: Files, receiver: Receiver
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=closed_api, headers=headers, timeout=60) as closed:
        model = stack.client().upload("models", files.models["relu_mlp"])["id"]
        batch = stack.client().upload("batches", files.batches["relu_mlp"])["id"]
        audit = {"name": "a", "schedule": "0 3 * * *", "model": model, "batch_id": batch}
        for form in REFUSED_FORMS:
            url = form.format(port=port)
            for path, body in (("/v1/runs", {"name": "r", "layers": LAYERS}), ("/v1/audits", audit)):
                answer = closed.post(path, json={**body, "webhook_url": url})
                assert answer.status_code == 422, (path, url, answer.text)
                message = answer.json()["error"]["message"]
                assert message.startswith("webhook_url"), message
                assert ("internal address" in message) or ("credentials" in message), message
        assert receiver.requests == []
        # The operator's allow-list (the main stack allows 127.0.0.1) is what lets the same URL through.
        assert closed.post("/v1/runs", json={"name": "r", "layers": LAYERS}).status_code == 201
        allowed = stack.client().http.post(
            "/v1/runs", json={"name": "r", "layers": LAYERS, "webhook_url": receiver.url}
        )
        assert allowed.status_code == 201, allowed.text
        other_loopback = f"http://127.0.0.2:{port}/hook"  # 127.0.0.1 is allowed, the rest of 127/8 is not
        refused = stack.client().http.post(
            "/v1/runs", json={"name": "r", "layers": LAYERS, "webhook_url": other_loopback}
        )
        assert refused.status_code == 422


def went_bad(http: httpx.Client, run_id: str) -> None:
    bad = batch_body(0, 0, 20)
    bad["loss"][5:] = [float("nan")] * 15
    for row in bad["metrics"]["nonfinite"][5:]:
        row[1] = 1.0
    assert post_logs(http, run_id, bad).json()["health"] in ("error", "critical")


def deliveries(http: httpx.Client, run_id: str, done: int, timeout: float = 60.0) -> list[dict]:
    """Poll until `done` attempts are finished (pending ones excluded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = http.get(f"/v1/runs/{run_id}/deliveries").json()["data"]
        finished = [r for r in rows if not r["pending"]]
        if len(finished) >= done:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"fewer than {done} finished deliveries after {timeout} s: {rows}")


def test_send_time_check_refuses_what_creation_let_through(stack: Stack) -> None:
    """The row says 127.0.0.2 (as a name re-resolved after creation would): the worker checks again, sends nothing."""
    inside = Receiver(host="127.0.0.2")  # reachable, so only the check can stop the POST
    http = stack.client().http
    try:
        run = http.post("/v1/runs", json={"name": "rebound", "layers": LAYERS, "webhook_url": "http://127.0.0.1:9/"})
        assert run.status_code == 201
        run_id = run.json()["id"]
        with session_scope(stack.settings) as session:
            session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(webhook_url=inside.url))
        went_bad(http, run_id)
        [row] = deliveries(http, run_id, 1)
        assert (row["ok"], row["category"], row["status_code"]) == (False, "refused_address", None)
        assert "internal address" in row["error"] and "GRADHEALTH_WEBHOOK_ALLOW_HOSTS" in row["error"]
        assert inside.requests == []
    finally:
        inside.close()


def test_deliveries_show_categories_never_exception_text(stack: Stack) -> None:
    http = stack.client().http
    with socket_closed_port() as port:
        run = http.post(
            "/v1/runs", json={"name": "nobody", "layers": LAYERS, "webhook_url": f"http://127.0.0.1:{port}/"}
        ).json()
        went_bad(http, run["id"])
        rows = deliveries(http, run["id"], 2)
    assert {r["category"] for r in rows if not r["pending"]} == {"connect_failed"}
    assert not any("Errno" in (r["error"] or "") or "Error" in (r["error"] or "") for r in rows)

    flaky = Receiver(503)
    try:
        run = http.post("/v1/runs", json={"name": "flaky", "layers": LAYERS, "webhook_url": flaky.url}).json()
        went_bad(http, run["id"])
        rows = deliveries(http, run["id"], 2)
        by_attempt = {r["attempt"]: r for r in rows}
        assert (by_attempt[1]["category"], by_attempt[1]["status_code"]) == ("http_status", 503)
        assert (by_attempt[2]["ok"], by_attempt[2]["category"]) == (True, None)
    finally:
        flaky.close()


@contextmanager
def socket_closed_port() -> Iterator[int]:
    """A port bound but not listening for the block's duration: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
