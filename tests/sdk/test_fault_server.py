"""The client against a real HTTP server that misbehaves on purpose: 429s, slow answers, restarts."""

from __future__ import annotations

import asyncio

import pytest
from gradhealth.sdk import errors

import gradhealth

from .conftest import analysis_body
from .servers import Answer, FaultServer, Seen, free_port


def _client(url: str, **kwargs: object) -> gradhealth.Client:
    return gradhealth.Client(base_url=url, api_key="ghk_test", **kwargs)  # type: ignore[arg-type]


def test_429_with_retry_after_is_waited_out_over_the_wire() -> None:
    def handler(seen: Seen) -> Answer:
        if len(stub.seen) == 1:
            return Answer(
                429, {"error": {"code": "rate_limited", "message": "slow down", "detail": None}}, {"Retry-After": "1"}
            )
        return Answer(202, analysis_body())

    slept: list[float] = []
    with FaultServer(handler) as stub, _client(stub.url) as client:
        client.sleep = slept.append  # the client's one wait, recorded instead of slept
        analysis = client.analyses.create(model_id="m1", batch_id="b1")
        assert analysis.id == "a1"
    first, second = stub.seen  # one retry, then done
    assert slept == [1.0]  # Retry-After honoured, read from the real answer's header
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.headers["authorization"] == "Bearer ghk_test" and second.headers["x-retry-count"] == "1"


def test_429_beyond_the_retry_budget_raises_rate_limit_error() -> None:
    body = {"error": {"code": "rate_limited", "message": "slow down", "detail": {"limit": 10}}}
    with FaultServer(lambda seen: Answer(429, body, {"Retry-After": "0.1"})) as stub:
        with _client(stub.url, max_retries=2) as client, pytest.raises(errors.RateLimitError) as caught:
            client.analyses.retrieve("a1")
    assert len(stub.seen) == 3 and caught.value.detail == {"limit": 10} and caught.value.code == "rate_limited"


def test_a_slow_answer_times_out_and_the_retry_succeeds() -> None:
    def handler(seen: Seen) -> Answer:
        return Answer(200, analysis_body(), delay=2.0 if len(stub.seen) == 1 else 0.0)

    with FaultServer(handler) as stub:
        with _client(stub.url, timeout=0.5, max_retries=0) as client, pytest.raises(errors.APITimeoutError):
            client.analyses.retrieve("a1")
        stub.seen.clear()
        with _client(stub.url, timeout=0.5, max_retries=1) as client:
            assert client.analyses.retrieve("a1").id == "a1"
        assert len(stub.seen) == 2


def test_nothing_listening_is_a_connection_error() -> None:
    with _client(f"http://127.0.0.1:{free_port()}", max_retries=1) as client:
        with pytest.raises(errors.APIConnectionError, match="cannot reach GET"):
            client.analyses.retrieve("a1")


def test_wait_survives_a_restart_mid_wait() -> None:
    polls = {"n": 0}

    def handler(seen: Seen) -> Answer:
        polls["n"] += 1
        if polls["n"] < 3:
            return Answer(200, analysis_body("running", 0.3, "forward_backward"))
        return Answer(200, analysis_body("succeeded", 1.0, "done"))

    stub = FaultServer(handler).start()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        """The client's waits: the server comes back during the second, so one request's retry budget ran out."""
        slept.append(seconds)
        if len(slept) == 2:
            stub.start()

    try:
        with _client(stub.url, max_retries=1) as client:
            assert client.analyses.retrieve("a1").status == "running"
            stub.stop()
            client.sleep = sleep
            done = client.analyses.wait("a1", timeout=30, poll_interval=0.2)
        assert done.status == "succeeded" and polls["n"] == 3 and len(slept) == 3, slept
    finally:
        stub.stop()


def test_async_wait_survives_a_restart_mid_wait() -> None:
    polls = {"n": 0}

    def handler(seen: Seen) -> Answer:
        polls["n"] += 1
        status = "succeeded" if polls["n"] >= 2 else "running"
        return Answer(200, analysis_body(status, 1.0 if status == "succeeded" else 0.5, status))

    stub = FaultServer(handler).start()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        """The client's waits: the first follows the failed poll; the server comes back during it."""
        slept.append(seconds)
        if len(slept) == 1:
            stub.start()

    async def scenario() -> str:
        async with gradhealth.AsyncClient(base_url=stub.url, api_key="k", max_retries=0) as client:
            await client.analyses.retrieve("a1")
            stub.stop()
            client.sleep = sleep
            done = await client.analyses.wait("a1", timeout=30, poll_interval=0.2)
            return done.status

    try:
        assert asyncio.run(scenario()) == "succeeded" and polls["n"] == 2 and len(slept) == 1
    finally:
        stub.stop()
