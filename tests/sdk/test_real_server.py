"""The SDK against a real `gradhealth serve` (API + embedded worker): analyses, every error type, restarts."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from gradhealth.sdk import errors
from gradhealth.sdk.check import EXIT_FAILED, EXIT_USAGE, main

import gradhealth

from .conftest import ZooFiles
from .servers import Served

try:
    from tests import zoo
except ImportError:  # tests/ itself on sys.path
    import zoo  # type: ignore[no-redef]

SICK, HEALTHY = "deep_sigmoid_mlp", "deep_relu_mlp_kaiming"


def _client(served: Served, **kwargs: object) -> gradhealth.Client:
    return gradhealth.Client(base_url=served.base_url, api_key=served.key, **kwargs)  # type: ignore[arg-type]


def test_analyze_a_module_in_one_call(served: Served) -> None:
    model, loss, inputs, targets = zoo.by_name(SICK).build()
    with _client(served) as client:
        report = client.analyze(model, (inputs, targets), loss=loss, optimizer="sgd", lr=0.1, momentum=0.9)
        assert isinstance(report, gradhealth.Report) and report.health == "error"
        assert report.findings_for("vanishing_gradient")[0].layers[0] == "net.0"
        analysis = next(iter(client.analyses.list(status="succeeded", limit=1)))
        assert "<svg" in client.analyses.report(analysis.id, format="html")
        assert ET.fromstring(client.analyses.report(analysis.id, format="junit")).tag == "testsuites"
        assert client.analyses.report(analysis.id, format="markdown").startswith("# gradhealth report")


def test_runs_list_pages_through_every_run(served: Served) -> None:
    layers = [{"name": "fc", "type": "Linear", "num_parameters": 10}]
    with _client(served) as client:
        created = {client.runs.create(f"paged-{i}", layers).id for i in range(3)}
        first = client.runs.list(limit=2)
        listed = [run.id for run in first]  # iterating walks the later pages too
        assert first.count >= 3 and len(first.data) == 2 and created <= set(listed)
        assert len(listed) == len(set(listed)) == first.count

    async def scenario() -> list[str]:
        async with gradhealth.AsyncClient(base_url=served.base_url, api_key=served.key) as client:
            return [run.id async for run in await client.runs.list(limit=2)]

    assert created <= set(asyncio.run(scenario()))


def test_async_client_and_handle(served: Served, zoo_files: ZooFiles) -> None:
    async def scenario() -> tuple[str, gradhealth.Report]:
        async with gradhealth.AsyncClient(base_url=served.base_url, api_key=served.key) as client:
            handle = await client.analyze(zoo_files.models[HEALTHY], zoo_files.batches[HEALTHY], wait=False)
            status = (await handle.status()).status
            return status, await handle.wait(progress=False, timeout=120)

    status, report = asyncio.run(scenario())
    assert status in ("queued", "running", "succeeded") and report.health == "healthy"


def test_each_error_type(served: Served, zoo_files: ZooFiles, tmp_path: Path) -> None:
    with gradhealth.Client(base_url=served.base_url, api_key="ghk_wrong") as stranger:
        with pytest.raises(errors.AuthenticationError, match="invalid or revoked"):
            stranger.analyses.list()
    reader_key = served.admin("create-key", "local", "--scope", "read")
    with gradhealth.Client(base_url=served.base_url, api_key=reader_key) as reader:
        with pytest.raises(errors.PermissionDeniedError) as denied:
            reader.models.upload(zoo_files.models[SICK])
        assert "needs 'write'" in denied.value.message
    with _client(served) as client:
        with pytest.raises(errors.NotFoundError) as missing:
            client.analyses.retrieve("no-such-analysis")
        assert missing.value.code == "not_found"
        truncated = tmp_path / "truncated.pt2"
        truncated.write_bytes(zoo_files.models[SICK].read_bytes()[:1000])
        with pytest.raises(errors.UnprocessableEntityError):
            client.models.upload(truncated)
        model = client.models.upload(zoo_files.models[SICK])
        batch = client.batches.upload(zoo_files.batches[SICK])
        with pytest.raises(errors.UnprocessableEntityError, match="unknown loss"):
            client.analyses.create(model_id=model.id, batch_id=batch.id, loss="hinge")

        wrong = gradhealth.save_batch(tmp_path / "wrong.safetensors", torch.randn(8, 7), torch.randint(0, 10, (8,)))
        handle = client.analyze(zoo_files.models[SICK], wrong, wait=False)
        with pytest.raises(errors.AnalysisFailedError) as failed:
            handle.wait(progress=False, timeout=120)
        assert failed.value.analysis.error is not None and failed.value.analysis.status == "failed"
        with pytest.raises(errors.ConflictError) as conflict:
            client.analyses.report(handle.id)
        assert conflict.value.code == "analysis_failed" and conflict.value.status_code == 409


def test_check_against_the_server(served: Served, zoo_files: ZooFiles, tmp_path: Path) -> None:
    server = ["--server", served.base_url, "--api-key", served.key, "--quiet"]
    with _client(served) as client:
        healthy = client.analyze(zoo_files.models[HEALTHY], zoo_files.batches[HEALTHY], wait=False)
        healthy.wait(progress=False, timeout=120)
    sick = ["--model", str(zoo_files.models[SICK]), "--batch", str(zoo_files.batches[SICK])]
    junit = tmp_path / "junit.xml"
    assert (
        main([*sick, *server, "--fail-on", "critical", "--baseline", healthy.id, "--junit", str(junit)]) == EXIT_FAILED
    )
    names = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert names["baseline_regression"].find("failure") is not None
    assert main([*sick, "--server", served.base_url, "--api-key", "ghk_wrong"]) == EXIT_USAGE


def test_wait_survives_a_server_restart(served: Served, zoo_files: ZooFiles) -> None:
    with _client(served) as client:
        handle = client.analyze(zoo_files.models[HEALTHY], zoo_files.batches[HEALTHY], wait=False)
        served.stop()  # the API is down before wait() starts: its first polls find nobody listening
        down: list[bool] = []

        def restart_then_sleep(seconds: float) -> None:
            """The client's waits; the first follows a failed attempt and brings the server back."""
            down.append(not served.running())
            if len(down) == 1:
                served.start()
            time.sleep(seconds)

        client.sleep = restart_then_sleep
        report = handle.wait(progress=False, timeout=120)
        assert down[0] and not any(down[1:])  # wait() met the server down, and carried on once it was back
        assert report.health == "healthy" and handle.analysis.status == "succeeded"
