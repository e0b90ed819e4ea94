"""wait(), handles, pagination and one-call analyze() over httpx.MockTransport."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import pytest
from gradhealth.sdk import errors
from gradhealth.sdk._progress import ProgressBar
from gradhealth.sdk.types import Analysis
from gradhealth.sdk.uploads import sha256_file

import gradhealth

from .conftest import Recorder, ZooFiles, analysis_body, error, make_async_client, make_client


def _status(status: str, fraction: float, phase: str, **extra: object) -> httpx.Response:
    return httpx.Response(200, json=analysis_body(status, fraction, phase, **extra))


def test_wait_polls_until_terminal_and_reports_progress() -> None:
    recorder = Recorder(
        _status("queued", 0, "queued"), _status("running", 0.4, "forward_backward"), _status("succeeded", 1.0, "done")
    )
    client = make_client(recorder)
    seen: list[float] = []
    done = client.analyses.wait("a1", on_progress=lambda a: seen.append(a.progress.fraction))
    assert done.status == "succeeded" and seen == [0, 0.4, 1.0]
    assert len(client.slept) == 2 and client.slept[1] > client.slept[0]  # the interval grows


def test_wait_returns_a_failed_analysis_as_is_and_the_handle_raises() -> None:
    failed = _status("failed", 0.2, "loading", error={"code": "bad_shape", "message": "inputs are [8, 3]"})
    client = make_client(Recorder(failed))
    assert client.analyses.wait("a1").error.code == "bad_shape"  # type: ignore[union-attr]
    handle = gradhealth.sdk.AnalysisHandle(client, Analysis.model_validate(analysis_body()))
    with pytest.raises(errors.AnalysisFailedError, match="bad_shape: inputs are") as caught:
        handle.wait(progress=False)
    assert caught.value.analysis.status == "failed"


def test_wait_times_out_with_the_last_state() -> None:
    client = make_client(Recorder(_status("running", 0.5, "statistics")))
    with pytest.raises(errors.WaitTimeoutError, match="still running .statistics, 50%.") as caught:
        client.analyses.wait("a1", timeout=0)
    assert isinstance(caught.value, TimeoutError)


def test_wait_rides_out_a_server_restart() -> None:
    down = httpx.ConnectError("refused")
    recorder = Recorder(
        _status("running", 0.1, "loading"), down, down, down, down, error(503), down, _status("succeeded", 1, "done")
    )
    client = make_client(recorder, max_retries=1)
    assert client.analyses.wait("a1", timeout=60).status == "succeeded"
    assert len(recorder.requests) == 8


def test_wait_gives_up_on_errors_that_will_not_pass() -> None:
    client = make_client(Recorder(error(404, code="not_found")))
    with pytest.raises(errors.NotFoundError):
        client.analyses.wait("nope")


def test_handle_report_waits_out_a_not_ready_409() -> None:
    report = {"_": "filled below"}
    recorder = Recorder(
        _status("succeeded", 1, "done"),
        error(409, code="not_ready", headers={"Retry-After": "0.1"}),
        lambda request: httpx.Response(200, json=report),
    )
    client = make_client(recorder)
    from gradhealth.sdk.handles import AnalysisHandle

    report.clear()
    report.update(json.loads(_tiny_report().model_dump_json()))
    handle = AnalysisHandle(client, Analysis.model_validate(analysis_body()))
    assert handle.wait(progress=False).health == "healthy"
    assert 0.1 in client.slept


def test_handle_report_of_failed_analysis_is_analysis_failed_error() -> None:
    failed = analysis_body("failed", error={"code": "oom", "message": "too big"})
    client = make_client(Recorder(error(409, code="analysis_failed"), httpx.Response(200, json=failed)))
    from gradhealth.sdk.handles import AnalysisHandle

    with pytest.raises(errors.AnalysisFailedError, match="oom"):
        AnalysisHandle(client, Analysis.model_validate(analysis_body())).report()


def test_list_pages_iterate_across_pages() -> None:
    def page(request: httpx.Request) -> httpx.Response:
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        items = [analysis_body(id=f"a{i}") for i in range(offset, min(offset + limit, 5))]
        return httpx.Response(200, json={"data": items, "count": 5})

    client = make_client(Recorder(page))
    first = client.analyses.list(limit=2)
    assert [a.id for a in first.data] == ["a0", "a1"] and first.has_next_page()
    assert first.next_page_info() == {"offset": 2, "limit": 2}
    assert [a.id for a in first] == [f"a{i}" for i in range(5)]
    assert len(list(first.iter_pages())) == 3

    async def walk() -> list[str]:
        async with make_async_client(Recorder(page)) as aclient:
            return [a.id async for a in await aclient.analyses.list(limit=2, status="succeeded")]

    assert asyncio.run(walk()) == [f"a{i}" for i in range(5)]


def test_progress_bar_is_silent_off_a_terminal() -> None:
    stream = io.StringIO()
    with ProgressBar(True, "x", stream=stream) as bar:
        bar.update(Analysis.model_validate(analysis_body("running", 0.5, "statistics")))
    assert stream.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    with ProgressBar(True, "analysis", stream=tty) as bar:
        bar.update(Analysis.model_validate(analysis_body("running", 0.5, "statistics")))
    assert "50%" in tty.getvalue() and "statistics" in tty.getvalue()
    quiet = Tty()
    with ProgressBar(False, "analysis", stream=quiet) as bar:
        bar.show("packaging")
    assert quiet.getvalue() == ""


def _tiny_report() -> gradhealth.Report:
    return gradhealth.Report.model_validate(
        {
            "id": "r1",
            "health": "healthy",
            "summary": "fine",
            "model": {
                "format": "torch.export",
                "num_parameters": 10,
                "num_layers": 1,
                "dtype": "float32",
                "device": "cpu",
            },
        }
    )


class FakeService:
    """Enough of the REST API to drive analyze(): uploads keyed by sha256, analyses that finish at once."""

    def __init__(self) -> None:
        self.uploads: dict[str, int] = {"models": 0, "batches": 0}
        self.created: list[dict] = []
        self.polls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path in ("/v1/models", "/v1/batches"):
            import hashlib
            import re

            kind = path.rsplit("/", 1)[1]
            self.uploads[kind] += 1
            body = request.content
            boundary = re.search(rb"boundary=(\S+)", request.headers["content-type"].encode()).group(1)  # type: ignore[union-attr]
            part = body.split(b"--" + boundary)[1]
            data = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
            sha = hashlib.sha256(data).hexdigest()
            extra = {"format": "torch.export"} if kind == "models" else {"shapes": {"inputs": [64, 32]}}
            return httpx.Response(
                201,
                json={
                    "id": f"{kind}-{sha[:6]}",
                    "sha256": sha,
                    "size_bytes": len(data),
                    "created_at": "2026-01-01T00:00:00Z",
                    **extra,
                },
            )
        if request.method == "POST" and path == "/v1/analyses":
            self.created.append(json.loads(request.content))
            return httpx.Response(202, json=analysis_body())
        if path == "/v1/analyses/a1":
            self.polls += 1
            return _status("succeeded", 1.0, "done") if self.polls > 1 else _status("running", 0.5, "rules")
        if path == "/v1/analyses/a1/report":
            return httpx.Response(200, content=_tiny_report().model_dump_json())
        return error(404)


def test_analyze_packages_uploads_once_and_returns_a_report(zoo_files: ZooFiles) -> None:
    import torch

    import tests.zoo as zoo

    service = FakeService()
    client = make_client(Recorder(service))
    model, loss, (inputs,), targets = zoo.by_name("deep_relu_mlp_kaiming").build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    report = client.analyze(model, (inputs, targets), loss=loss, optimizer=optimizer, progress=False)
    assert isinstance(report, gradhealth.Report) and report.health == "healthy"
    assert service.uploads == {"models": 1, "batches": 1}
    sent = service.created[0]
    assert sent["optimizer"]["name"] == "sgd" and sent["optimizer"]["lr"] == 0.05
    assert sent["optimizer"]["momentum"] == 0.9 and "loss" not in sent  # the package computes its loss

    # Files the client already uploaded are not sent again; a named loss goes with a plain package.
    handle = client.analyze(zoo_files.models["deep_sigmoid_mlp"], zoo_files.batches["deep_sigmoid_mlp"], wait=False)
    assert isinstance(handle, gradhealth.sdk.AnalysisHandle) and service.uploads == {"models": 2, "batches": 2}
    client.analyze(zoo_files.models["deep_sigmoid_mlp"], zoo_files.batches["deep_sigmoid_mlp"], loss="mse", wait=False)
    assert service.uploads == {"models": 2, "batches": 2} and service.created[-1]["loss"] == "mse"
    assert handle.status().status in ("running", "succeeded") and handle.report().id == "r1"
    assert client._known_uploads[("models", sha256_file(zoo_files.models["deep_sigmoid_mlp"]))]


def test_analyze_argument_errors_are_clear(zoo_files: ZooFiles, tmp_path: Path) -> None:
    import torch

    client = make_client(Recorder(FakeService()))
    model = torch.nn.Linear(4, 2)
    data = (torch.randn(8, 4), torch.randint(0, 2, (8,)))
    with pytest.raises(ValueError, match="pass loss="):
        client.analyze(model, data)
    with pytest.raises(ValueError, match="needs lr"):
        client.analyze(model, data, loss="cross_entropy", optimizer="adam")
    with pytest.raises(ValueError, match="lr needs optimizer"):
        client.analyze(model, data, loss="cross_entropy", lr=0.1)
    with pytest.raises(FileNotFoundError, match="no such model package"):
        client.analyze(tmp_path / "missing.pt2", zoo_files.batches["deep_sigmoid_mlp"])
    with pytest.raises(ValueError, match="callable loss"):
        client.analyze(zoo_files.models["deep_sigmoid_mlp"], zoo_files.batches["deep_sigmoid_mlp"], loss=lambda o, t: o)


def test_async_analyze_matches_sync(zoo_files: ZooFiles) -> None:
    service = FakeService()

    async def run() -> gradhealth.Report:
        async with make_async_client(Recorder(service)) as client:
            return await client.analyze(
                zoo_files.models["deep_sigmoid_mlp"], zoo_files.batches["deep_sigmoid_mlp"], progress=False
            )

    assert asyncio.run(run()).id == "r1" and service.uploads == {"models": 1, "batches": 1}
