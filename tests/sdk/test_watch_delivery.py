"""watch() over real HTTP: a down service never blocks training; failed batches are retried under the same seq."""

from __future__ import annotations

import socket
import statistics
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradhealth.sdk.watching import WatchWarning, watch
from gradhealth.sdk.watching._shipper import Shipper
from torch import nn

import gradhealth

from .servers import Answer, FaultServer, Seen, Served, free_port
from .test_watch_support import METRICS, Net, Reference, assert_matches, batches, decode, twin


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1))


def _loop(model: nn.Module, opt: torch.optim.Optimizer, steps: int, handle: Any, bound: int) -> None:
    x, y = torch.randn(128, 128), torch.randn(128, 1)
    for _ in range(steps):
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        handle.log(loss=loss)
        assert handle.buffered <= bound


@pytest.mark.parametrize("service", ["refusing", "silent"])
def test_a_down_service_never_blocks_training_and_memory_stays_bounded(service: str) -> None:
    """Mechanism, not timing: against a service that never answers, every step still returns.

    A log() that waited on the network would hang on the silent listener (its connections are
    accepted by the kernel and never answered), so finishing the loop, with the oldest records
    dropped and counted and at most `bound` buffered, is the proof.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if service == "silent":
            listener.listen(64)
        else:
            listener.close()  # nobody listens: connections are refused
        client = gradhealth.Client(base_url=f"http://127.0.0.1:{port}", api_key="k")
        steps, bound = 100, 40
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = _mlp()
            opt = torch.optim.SGD(model.parameters(), lr=1e-3)
            handle = watch(model, opt, run="down", client=client, max_buffered_steps=bound, budget=None)
            _loop(model, opt, steps, handle, bound)
            assert handle.run_id is None and handle.dropped == steps - bound - 1  # one record still open
            handle.close(timeout=0.5)  # returns although the service never answers
            assert handle.dropped == handle.steps_recorded == steps  # none delivered, all counted
    messages = [str(w.message) for w in caught if issubclass(w.category, WatchWarning)]
    assert len(messages) == 1 and "dropping the oldest" in messages[0], messages


@pytest.mark.timeout(300)  # a hang detector, not a speed limit: report() must not wait out its hour
def test_report_on_a_down_service_answers_once_an_attempt_fails() -> None:
    client = gradhealth.Client(base_url=f"http://127.0.0.1:{free_port()}", api_key="k", max_retries=0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        handle = watch(model, opt, run="down-report", client=client)
        for x, y in batches(3):
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        failed = handle._shipper.failed_attempts
        assert handle.flush(timeout=3600) is False  # returns after the attempt it caused fails
        assert handle._shipper.failed_attempts > failed
        with pytest.raises(RuntimeError, match="not on the service yet: APIConnectionError"):
            handle.report(timeout=3600)
        handle.close(timeout=0.1)


def test_close_says_once_what_it_could_not_deliver() -> None:
    client = gradhealth.Client(base_url=f"http://127.0.0.1:{free_port()}", api_key="k", max_retries=0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        handle = watch(model, opt, run="t", client=client)
        for x, y in batches(5):
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        joins: list[float | None] = []
        thread = handle._shipper._thread
        join = thread.join

        def recorded_join(timeout: float | None = None) -> None:
            joins.append(timeout)
            join(timeout)

        thread.join = recorded_join  # type: ignore[method-assign]
        handle.close(timeout=0.3)
        assert joins == [0.3]  # close's only wait is on the shipper, for at most the timeout given
    messages = [str(w.message) for w in caught if w.category is WatchWarning]
    assert len(messages) == 1 and "5 recorded steps were not delivered (APIConnectionError" in messages[0], messages
    assert handle.dropped == 5 and handle.run_id is None


def _stub(answers: list[int], num_layers: int) -> FaultServer:
    """A service that creates runs and answers log batches with the scripted statuses, then 200."""
    logs: list[Seen] = []

    def handler(seen: Seen) -> Answer:
        if seen.path == "/v1/runs":
            return Answer(201, {"id": "run-9", "name": "t", "num_layers": num_layers, "metrics": METRICS})
        logs.append(seen)
        status = answers[len(logs) - 1] if len(logs) <= len(answers) else 200
        if status != 200:
            return Answer(status, {"error": {"code": "x", "message": f"status {status}", "detail": None}})
        return Answer(200, {"stored": True, "seq": 0, "steps": 1, "run_steps": 1, "health": "healthy"})

    return FaultServer(handler)


def _train_against(server: FaultServer, steps: int, **options: Any) -> tuple[Any, Reference, list[float]]:
    model, ref_model = twin(Net)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1)
    client = gradhealth.Client(base_url=server.url, api_key="ghk_test", max_retries=0)
    data = batches(steps)
    losses = []
    with watch(model, opt, run="t", client=client, param_every=1, **options) as handle:
        for x, y in data:
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            handle.log(loss=loss)
            losses.append(loss.item())
    reference = Reference(ref_model, ref_opt).train(data)
    return handle, reference, losses


def _logged(bodies: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out = {}
    for batch in bodies:
        for i, step in enumerate(batch["steps"]):
            out[step] = {"loss": batch["loss"][i], "lr": batch["lr"][i], **{m: batch["metrics"][m][i] for m in METRICS}}
    return out


def test_a_failed_batch_is_retried_with_the_same_seq_and_arrives_intact() -> None:
    with _stub([503], num_layers=6) as server:
        handle, reference, losses = _train_against(server, steps=5)
    create, *logs = server.seen
    assert create.path == "/v1/runs" and create.headers["authorization"] == "Bearer ghk_test"
    assert [s.path for s in logs] == ["/v1/runs/run-9/logs"] * 2
    assert logs[0].body == logs[1].body  # the very same batch, seq included
    assert all(s.headers["content-type"] == "application/msgpack" for s in logs)
    batch = decode(logs[1].body)
    assert batch["seq"] == 0 and batch["steps"] == [0, 1, 2, 3, 4] and batch["dropped"] == 0
    assert all(batch["metrics"][m].dtype == np.dtype("<f4") for m in METRICS)
    logged = _logged([batch])
    assert_matches(logged, reference.steps)
    assert [logged[s]["loss"] for s in range(5)] == pytest.approx(losses, rel=1e-6)
    assert handle.dropped == 0 and handle.run_id == "run-9"


def test_a_refused_batch_is_counted_as_dropped_in_the_next_one() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _stub([422], num_layers=6) as server:
            handle, _, _ = _train_against(server, steps=6, batch_steps=2)
    bodies = [decode(s.body) for s in server.seen[1:]]
    assert [b["seq"] for b in bodies] == [0, 1, 2]
    assert [b["steps"] for b in bodies] == [[0, 1], [2, 3], [4, 5]]
    assert [b["dropped"] for b in bodies] == [0, 2, 0]
    assert handle.dropped == 2
    messages = [str(w.message) for w in caught if w.category is WatchWarning]
    assert len(messages) == 1 and "refused log batch 0 (2 steps)" in messages[0] and "status 422" in messages[0]


def test_a_refused_run_stops_watching_with_one_warning() -> None:
    server = FaultServer(lambda seen: Answer(401, {"error": {"code": "unauthorized", "message": "bad key"}}))
    with warnings.catch_warnings(record=True) as caught, server:
        warnings.simplefilter("always")
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        client = gradhealth.Client(base_url=server.url, api_key="wrong", max_retries=0)
        with watch(model, opt, run="t", client=client) as handle:
            for step, (x, y) in enumerate(batches(3)):
                F.mse_loss(model(x), y).backward()
                opt.step()
                opt.zero_grad()
                if step == 0:  # the shipper tries now and flush() waits on it (no sleep); later steps add nothing
                    assert not handle.flush(timeout=1.0)
            assert not handle.flush(timeout=1.0)
    assert [s.path for s in server.seen] == ["/v1/runs"]
    messages = [str(w.message) for w in caught if w.category is WatchWarning]
    assert len(messages) == 1 and "refused the run" in messages[0] and "bad key" in messages[0]


def test_watch_against_a_real_service_gives_a_run_report(served: Served) -> None:
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    client = gradhealth.Client(base_url=served.base_url, api_key=served.key)
    with watch(model, opt, run="e2e", client=client, batch_steps=8) as handle:
        for x, y in batches(20):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            handle.log(loss=loss)
        report = handle.report()
    assert report.kind == "run"
    run = client.runs.retrieve(handle.run_id)
    assert run.run_steps == 20 and run.num_layers == len(handle.layers)
    history = client.runs.history(handle.run_id, "head", "grad_norm")
    assert history["steps"] == list(range(20))
    assert statistics.fmean(v for v in history["values"] if v is not None) > 0
    assert isinstance(handle._shipper, Shipper) and handle._shipper.cpu_per_record() > 0  # the budget's shipping share
