"""client.analyze(batches=[...]) and analyses.create(batch_ids=...) over httpx.MockTransport (issue 13)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from gradhealth.sdk.analyses import create_body

import gradhealth

from .conftest import Recorder, ZooFiles, make_async_client, make_client
from .test_wait_and_analyze import FakeService


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)


def test_batches_are_each_uploaded_and_sent_as_batch_ids() -> None:
    service = FakeService()
    client = make_client(Recorder(service))
    report = client.analyze(torch.nn.Linear(4, 2), batches=[_batch(1), _batch(2)], loss="cross_entropy", progress=False)
    assert report.id == "r1" and service.uploads == {"models": 1, "batches": 2}
    sent = service.created[0]
    assert "batch_id" not in sent and len(sent["batch_ids"]) == 2 and len(set(sent["batch_ids"])) == 2


def test_one_listed_batch_is_sent_as_batch_id(zoo_files: ZooFiles) -> None:
    service = FakeService()
    client = make_client(Recorder(service))
    path = zoo_files.batches["deep_sigmoid_mlp"]
    client.analyze(zoo_files.models["deep_sigmoid_mlp"], batches=[path], progress=False)
    assert "batch_ids" not in service.created[0] and service.created[0]["batch_id"].startswith("batches-")


def test_async_client_sends_the_list(zoo_files: ZooFiles) -> None:
    service = FakeService()
    model = zoo_files.models["deep_sigmoid_mlp"]
    paths = [zoo_files.batches["deep_sigmoid_mlp"], zoo_files.batches["deep_relu_mlp_kaiming"]]

    async def run() -> gradhealth.Report:
        async with make_async_client(Recorder(service)) as client:
            return await client.analyze(model, batches=paths, progress=False)

    assert asyncio.run(run()).id == "r1" and len(service.created[0]["batch_ids"]) == 2


def test_batch_arguments_are_checked_before_any_upload() -> None:
    service = FakeService()
    client = make_client(Recorder(service))
    model = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match="not both"):
        client.analyze(model, _batch(1), batches=[_batch(2)], loss="cross_entropy")
    with pytest.raises(ValueError, match="not both and not neither"):
        client.analyze(model, loss="cross_entropy")
    with pytest.raises(ValueError, match="1 to 16"):
        client.analyze(model, batches=[_batch(1)] * 17, loss="cross_entropy")
    assert service.uploads == {"models": 0, "batches": 0} and service.created == []
    with pytest.raises(ValueError, match="batch_id or batch_ids"):
        create_body("m", "b", None, None, "fp32", ("standard",), ["b"])
