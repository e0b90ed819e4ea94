"""Client HTTP behaviour over httpx.MockTransport: retries, backoff, Retry-After, idempotency, errors."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from gradhealth.sdk import errors
from gradhealth.sdk._base import retry_delay
from gradhealth.sdk._constants import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY

import gradhealth

from .conftest import Recorder, analysis_body, error, make_async_client, make_client

OK = httpx.Response(200, json=analysis_body())


def test_env_configures_url_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADHEALTH_URL", "http://env.test:9/")
    monkeypatch.setenv("GRADHEALTH_API_KEY", "ghk_env")
    recorder = Recorder(OK)
    client = gradhealth.Client(http_client=httpx.Client(transport=httpx.MockTransport(recorder)))
    client.analyses.retrieve("a1")
    sent = recorder.requests[0]
    assert str(sent.url) == "http://env.test:9/v1/analyses/a1"
    assert sent.headers["authorization"] == "Bearer ghk_env"
    assert sent.headers["user-agent"].startswith("gradhealth-python/")


def test_local_serve_key_is_found_for_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GRADHEALTH_API_KEY", raising=False)
    monkeypatch.setenv("GRADHEALTH_DATA_DIR", str(tmp_path))
    (tmp_path / "api_key").write_text("ghk_local\n")
    assert gradhealth.Client(base_url="http://127.0.0.1:8000").api_key == "ghk_local"
    assert gradhealth.Client(base_url="https://gradhealth.example.com").api_key is None


def test_every_request_carries_a_timeout() -> None:
    recorder = Recorder(OK)
    client = make_client(recorder, timeout=3.0)
    client.analyses.retrieve("a1")
    assert recorder.requests[0].extensions["timeout"] == {"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}
    default = gradhealth.Client()
    assert (default.timeout.read, default.timeout.connect) == (600.0, 5.0)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retry_allow_list_then_success(status: int) -> None:
    recorder = Recorder(error(status), OK)
    client = make_client(recorder)
    assert client.analyses.retrieve("a1").id == "a1"
    assert len(recorder.requests) == 2
    assert recorder.requests[1].headers["x-retry-count"] == "1"


@pytest.mark.parametrize(
    "status,cls,builtin",
    [
        (400, errors.BadRequestError, ValueError),
        (401, errors.AuthenticationError, errors.APIStatusError),
        (403, errors.PermissionDeniedError, errors.APIStatusError),
        (404, errors.NotFoundError, LookupError),
        (413, errors.PayloadTooLargeError, errors.APIStatusError),
        (422, errors.UnprocessableEntityError, ValueError),
    ],
)
def test_client_errors_are_typed_and_not_retried(status: int, cls: type, builtin: type) -> None:
    recorder = Recorder(error(status, code="the_code", message="what to fix"))
    client = make_client(recorder)
    with pytest.raises(cls) as caught:
        client.analyses.retrieve("a1")
    exc = caught.value
    assert isinstance(exc, builtin) and isinstance(exc, errors.APIStatusError) and isinstance(exc, errors.APIError)
    assert (exc.status_code, exc.code, exc.message) == (status, "the_code", "what to fix")
    assert exc.body == {"error": {"code": "the_code", "message": "what to fix", "detail": None}}
    assert str(exc) == f"{status} the_code: what to fix"
    assert len(recorder.requests) == 1 and client.slept == []


@pytest.mark.parametrize(
    "status,cls", [(409, errors.ConflictError), (429, errors.RateLimitError), (503, errors.InternalServerError)]
)
def test_retryable_errors_raise_typed_after_budget(status: int, cls: type) -> None:
    recorder = Recorder(error(status))
    client = make_client(recorder, max_retries=3)
    with pytest.raises(cls):
        client.analyses.retrieve("a1")
    assert len(recorder.requests) == 4 and len(client.slept) == 3


def test_non_json_error_body_still_maps() -> None:
    client = make_client(Recorder(httpx.Response(502, text="<html>bad gateway</html>")), max_retries=0)
    with pytest.raises(errors.InternalServerError) as caught:
        client.analyses.retrieve("a1")
    assert caught.value.code is None and "bad gateway" in caught.value.message


def test_backoff_is_exponential_jittered_and_capped() -> None:
    for attempt in range(8):
        base = min(INITIAL_RETRY_DELAY * 2**attempt, MAX_RETRY_DELAY)
        for _ in range(20):
            assert 0.75 * base <= retry_delay(attempt, None) <= base
    recorder = Recorder(error(503))
    client = make_client(recorder, max_retries=6)
    with pytest.raises(errors.InternalServerError):
        client.analyses.retrieve("a1")
    assert len(client.slept) == 6 and client.slept[0] <= INITIAL_RETRY_DELAY
    assert max(client.slept) <= MAX_RETRY_DELAY and client.slept[-1] >= 0.75 * MAX_RETRY_DELAY


@pytest.mark.parametrize(
    "headers,expected",
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "0.25"}, 0.25),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After": "0"}, 0.0),
    ],
)
def test_retry_after_is_honoured(headers: dict[str, str], expected: float) -> None:
    client = make_client(Recorder(error(429, headers=headers), OK))
    client.analyses.retrieve("a1")
    assert client.slept == [expected]


def test_retry_after_http_date_and_cap() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    client = make_client(Recorder(error(503, headers={"Retry-After": when}), OK))
    client.analyses.retrieve("a1")
    assert 3.0 <= client.slept[0] <= 5.0
    capped = make_client(Recorder(error(429, headers={"Retry-After": "3600"}), OK))
    capped.analyses.retrieve("a1")
    assert capped.slept[0] <= INITIAL_RETRY_DELAY  # an hour is not honoured: backoff instead


def test_connection_errors_are_retried_then_raised() -> None:
    recorder = Recorder(httpx.ConnectError("refused"), OK)
    client = make_client(recorder)
    assert client.analyses.retrieve("a1").id == "a1"
    always = make_client(Recorder(httpx.ConnectError("refused")), max_retries=2)
    with pytest.raises(errors.APIConnectionError) as caught:
        always.analyses.retrieve("a1")
    assert not isinstance(caught.value, errors.APITimeoutError)
    assert "cannot reach GET http://gh.test/v1/analyses/a1" in str(caught.value)
    assert len(always.slept) == 2


def test_timeouts_raise_api_timeout_error() -> None:
    client = make_client(Recorder(httpx.ReadTimeout("slow")), max_retries=1)
    with pytest.raises(errors.APITimeoutError) as caught:
        client.analyses.retrieve("a1")
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, errors.APIConnectionError)


def test_bad_scheme_is_not_retried() -> None:
    client = make_client(Recorder(httpx.UnsupportedProtocol("ftp")), max_retries=5)
    with pytest.raises(errors.APIConnectionError):
        client.analyses.retrieve("a1")
    assert client.slept == []


def test_one_idempotency_key_per_logical_post() -> None:
    created = httpx.Response(202, json=analysis_body())
    recorder = Recorder(error(503), httpx.ConnectError("reset"), created, created)
    client = make_client(recorder)
    client.analyses.create(model_id="m1", batch_id="b1")
    keys = [r.headers.get("idempotency-key") for r in recorder.requests]
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    client.analyses.create(model_id="m1", batch_id="b1")
    assert recorder.requests[-1].headers["idempotency-key"] != keys[0]
    client.analyses.create(model_id="m1", batch_id="b1", idempotency_key="mine")
    assert recorder.requests[-1].headers["idempotency-key"] == "mine"
    client.analyses.retrieve("a1")
    assert "idempotency-key" not in recorder.requests[-1].headers  # GETs are idempotent by nature


def test_create_body_and_optimizer_spec() -> None:
    recorder = Recorder(httpx.Response(202, json=analysis_body()))
    client = make_client(recorder)
    from gradhealth.diagnostics.options import OptimizerSpec

    client.analyses.create(
        model_id="m1",
        batch_id="b1",
        loss="mse",
        optimizer=OptimizerSpec(name="sgd", lr=0.1, momentum=0.9),
        precision="bf16",
        checks=("standard", "curvature"),
        check_settings={"trace_probes": 0, "top_eigenvalues": 3},
    )
    body = json.loads(recorder.bodies[0])
    assert body["model_id"] == "m1" and body["loss"] == "mse" and body["precision"] == "bf16"
    assert body["checks"] == ["standard", "curvature"]
    assert body["trace_probes"] == 0 and body["top_eigenvalues"] == 3
    with pytest.raises(ValueError, match="unknown check setting"):
        client.analyses.create(model_id="m1", batch_id="b1", check_settings={"trace_probe": 0})
    assert len(recorder.bodies) == 1  # refused before sending
    assert body["optimizer"]["name"] == "sgd" and body["optimizer"]["momentum"] == 0.9


def test_upload_resends_every_byte_on_retry(tmp_path: Path) -> None:
    payload = tmp_path / "model.pt2"
    payload.write_bytes(b"x" * 200_000)
    from gradhealth.sdk.uploads import sha256_file

    ok = httpx.Response(
        201,
        json={
            "id": "m1",
            "sha256": sha256_file(payload),
            "format": "torch.export",
            "size_bytes": 200_000,
            "created_at": "2026-01-01T00:00:00Z",
        },
    )
    recorder = Recorder(error(503), ok)
    client = make_client(recorder)
    model = client.models.upload(payload)
    assert model.id == "m1"
    assert len(recorder.bodies) == 2 and len(recorder.bodies[0]) == len(recorder.bodies[1])
    for body in recorder.bodies:  # the file is reopened per attempt: the retry is not an empty part
        assert b"x" * 200_000 in body and b'name="file"; filename="model.pt2"' in body
    assert recorder.requests[0].headers["idempotency-key"] == recorder.requests[1].headers["idempotency-key"]


def test_upload_digest_mismatch_is_an_error(tmp_path: Path) -> None:
    payload = tmp_path / "batch.safetensors"
    payload.write_bytes(b"abc")
    bad = httpx.Response(
        201, json={"id": "b1", "sha256": "0" * 64, "shapes": {}, "size_bytes": 3, "created_at": "2026-01-01T00:00:00Z"}
    )
    with pytest.raises(errors.APIError, match="arrived corrupted"):
        make_client(Recorder(bad)).batches.upload(payload)
    with pytest.raises(FileNotFoundError):
        make_client(Recorder(bad)).batches.upload(tmp_path / "missing")


def test_report_409_is_not_blindly_retried() -> None:
    recorder = Recorder(error(409, code="not_ready", headers={"Retry-After": "1"}))
    client = make_client(recorder, max_retries=5)
    with pytest.raises(errors.ConflictError) as caught:
        client.analyses.report("a1")
    assert caught.value.code == "not_ready" and len(recorder.requests) == 1


def test_async_client_has_the_same_retry_and_errors() -> None:
    async def scenario() -> None:
        recorder = Recorder(
            error(429, headers={"Retry-After": "2"}), httpx.ConnectError("x"), httpx.Response(202, json=analysis_body())
        )
        async with make_async_client(recorder) as client:
            analysis = await client.analyses.create(model_id="m1", batch_id="b1")
            assert analysis.status == "queued"
            assert client.slept[0] == 2.0 and len(client.slept) == 2
            assert len({r.headers["idempotency-key"] for r in recorder.requests}) == 1
        async with make_async_client(Recorder(error(404, code="not_found"))) as client:
            with pytest.raises(errors.NotFoundError):
                await client.analyses.retrieve("zzz")
        async with make_async_client(Recorder(httpx.ReadTimeout("slow")), max_retries=0) as client:
            with pytest.raises(errors.APITimeoutError):
                await client.analyses.retrieve("a1")

    asyncio.run(scenario())


def test_same_method_names_on_both_clients() -> None:
    for resource in ("models", "batches", "analyses", "audits"):
        sync = getattr(gradhealth.Client(), resource)
        async_ = getattr(gradhealth.AsyncClient(), resource)
        names = {n for n in dir(sync) if not n.startswith("_")}
        assert names == {n for n in dir(async_) if not n.startswith("_")}, resource
    assert callable(gradhealth.AsyncClient().analyze)
