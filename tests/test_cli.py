"""`gradhealth analyze` as a user runs it: a real subprocess, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from gradhealth.report import Report

import gradhealth


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gradhealth.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 4))
    x, y = torch.randn(32, 32), torch.randint(0, 4, (32,))
    gradhealth.package(model, "cross_entropy", x, y, root / "model.pt2")
    gradhealth.save_batch(root / "batch.safetensors", x, y)
    return {"model": root / "model.pt2", "batch": root / "batch.safetensors", "root": root}


def test_json_report_on_stdout(files: dict[str, Path]) -> None:
    done = _cli("analyze", "--model", str(files["model"]), "--batch", str(files["batch"]))
    assert done.returncode == 0, done.stderr
    report = Report.model_validate(json.loads(done.stdout))
    assert report.findings_for("vanishing_gradient"), report.summary
    assert report.model.num_layers == 7


def test_markdown_to_file_with_optimizer_and_curvature(files: dict[str, Path]) -> None:
    out = files["root"] / "report.md"
    done = _cli(
        "analyze",
        "--model",
        str(files["model"]),
        "--batch",
        str(files["batch"]),
        "--format",
        "markdown",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--momentum",
        "0.9",
        "--checks",
        "standard,curvature",
        "--trace-probes",
        "0",
        "--output",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert text.startswith("# gradhealth report") and "vanishing_gradient" in text and "| layer |" in text
    assert "`curvature.trace`: left out: trace_probes=0" in text  # the flag reached the engine


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "missing.pt2", "--batch", "missing.safetensors"], "no such file"),
        (["--checks", "standard,everything"], "checks"),
        (["--lr", "0.1"], "--lr needs --optimizer"),
        (["--optimizer", "sgd"], "--optimizer needs --lr"),
        (["--loss", "hinge"], "unknown loss"),
        (["--trace-probes", "1"], "trace_probes must be 0"),
        (["--top-eigenvalues", "0"], "top_eigenvalues"),
    ],
)
def test_usage_and_input_errors_exit_2(files: dict[str, Path], args: list[str], message: str) -> None:
    base = {"--model": str(files["model"]), "--batch": str(files["batch"])}
    for key in list(base):
        if key in args:
            base.pop(key)
    argv = ["analyze", *[item for pair in base.items() for item in pair], *args]
    done = _cli(*argv)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_corrupt_model_file_exits_2(files: dict[str, Path]) -> None:
    bad = files["root"] / "truncated.pt2"
    bad.write_bytes(files["model"].read_bytes()[:500])
    done = _cli("analyze", "--model", str(bad), "--batch", str(files["batch"]))
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_pickled_archive_entry_exits_2_without_running(files: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    import pickle

    src = zipfile.ZipFile(files["model"])
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(evil, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if "sample_inputs" in info.filename:
                data = pickle.dumps(Payload())
            out.writestr(info, data)
    done = _cli("analyze", "--model", str(evil), "--batch", str(files["batch"]))
    assert done.returncode == 2, done.stdout[-500:]
    assert not marker.exists()
