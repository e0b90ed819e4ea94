"""SDK fixtures: zoo packages and reports built once, paired sync/async mock clients, a real `gradhealth serve`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

import gradhealth

from .servers import Served, start_serve

try:
    from tests import zoo
except ImportError:  # tests/ itself on sys.path
    import zoo  # type: ignore[no-redef]

CASES = ("deep_sigmoid_mlp", "deep_relu_mlp_kaiming")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@dataclass
class ZooFiles:
    """Package and batch files of a few zoo cases, and their local reports."""

    root: Path
    models: dict[str, Path]
    batches: dict[str, Path]

    def report(self, name: str) -> gradhealth.Report:
        from gradhealth.diagnostics import analyze_files

        return gradhealth.Report.from_engine(analyze_files(self.models[name], self.batches[name]))


@pytest.fixture(scope="session")
def zoo_files(tmp_path_factory: pytest.TempPathFactory) -> ZooFiles:
    root = tmp_path_factory.mktemp("sdk-zoo")
    models, batches = {}, {}
    for name in CASES:
        model, loss, inputs, targets = zoo.by_name(name).build()
        models[name] = gradhealth.package(model, loss, inputs, targets, root / f"{name}.pt2")
        batches[name] = gradhealth.save_batch(root / f"{name}.safetensors", inputs, targets)
    return ZooFiles(root, models, batches)


@pytest.fixture(scope="session")
def reports(zoo_files: ZooFiles) -> dict[str, gradhealth.Report]:
    return {name: zoo_files.report(name) for name in CASES}


@pytest.fixture(scope="session")
def scaled_reports() -> tuple[gradhealth.Report, gradhealth.Report]:
    """A healthy deep ReLU MLP, and the same model with one middle layer's init scaled up 1000x."""
    model, loss, inputs, targets = zoo.by_name("deep_relu_mlp_kaiming").build()
    before = gradhealth.analyze(model, loss, inputs, targets)
    with torch.no_grad():
        model.net[24].weight.mul_(1000.0)
    return before, gradhealth.analyze(model, loss, inputs, targets)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """Scripted answers for httpx.MockTransport, and every request it saw."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(request.read())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer


def error(status: int, code: str = "x", message: str = "nope", headers: dict[str, str] | None = None) -> httpx.Response:
    """A response in the service's error shape."""
    body = {"error": {"code": code, "message": message, "detail": None}}
    return httpx.Response(status, json=body, headers=headers)


def analysis_body(status: str = "queued", fraction: float = 0.0, phase: str = "queued", **extra: object) -> dict:
    body = {
        "id": "a1",
        "status": status,
        "model_id": "m1",
        "batch_id": "b1",
        "progress": {"phase": phase, "fraction": fraction},
        "attempts": 0,
        "created_at": "2026-01-01T00:00:00Z",
        "error": None,
    }
    body.update(extra)
    return body


def make_client(recorder: Recorder, **kwargs: object) -> gradhealth.Client:
    """A Client over a MockTransport whose sleeps are recorded, not slept."""
    client = gradhealth.Client(
        base_url="http://gh.test",
        api_key="ghk_test",
        http_client=httpx.Client(transport=httpx.MockTransport(recorder)),
        **kwargs,  # type: ignore[arg-type]
    )
    client.slept = []  # type: ignore[attr-defined]
    client.sleep = client.slept.append  # type: ignore[attr-defined]
    return client


def make_async_client(recorder: Recorder, **kwargs: object) -> gradhealth.AsyncClient:
    """An AsyncClient over a MockTransport whose sleeps are recorded, not slept."""
    client = gradhealth.AsyncClient(
        base_url="http://gh.test",
        api_key="ghk_test",
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(recorder)),
        **kwargs,  # type: ignore[arg-type]
    )
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    client.slept = slept  # type: ignore[attr-defined]
    client.sleep = record
    return client


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real `gradhealth serve` (API + embedded worker, SQLite) shared by the real-server tests."""
    for module in ("fastapi", "uvicorn", "celery", "sqlalchemy"):
        pytest.importorskip(module, reason="server extra not installed: pip install -e '.[server]'")
    try:
        from gradhealth import server_cli  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"`gradhealth serve` is not available yet: {exc}")
    proc = start_serve(tmp_path_factory.mktemp("serve"))
    try:
        yield proc
    finally:
        proc.stop()


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path
