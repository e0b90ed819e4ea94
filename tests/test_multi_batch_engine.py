"""Several batches through the engine's entry points: files, the sandbox child's target, in-process analyze, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from gradhealth.diagnostics import analyze_files
from gradhealth.report import Report
from gradhealth.workers.engine_child import MAX_BATCH_FILES, MODEL_FILE, analyze, batch_file_names
from gradhealth.workers.sandbox_errors import ChildFailure

import gradhealth


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _batch(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | list[Path]]:
    root = tmp_path_factory.mktemp("multi")
    gradhealth.package(_model(), "cross_entropy", *_batch(1), root / "model.pt2")
    batches = [gradhealth.save_batch(root / f"b{i}.safetensors", *_batch(i, 8 + i)) for i in range(1, 4)]
    return {"model": root / "model.pt2", "batches": batches}


def _loss(report: Report) -> float:
    value = report.metrics["loss"]
    assert isinstance(value, float)
    return value


def test_files_merge_to_the_mean_of_single_batch_losses(
    files: dict[str, Path | list[Path]], one_torch_thread: None
) -> None:
    batches = files["batches"]
    assert isinstance(batches, list)
    singles = [_loss(analyze_files(files["model"], b)) for b in batches]  # type: ignore[arg-type]
    merged = analyze_files(files["model"], batches)  # type: ignore[arg-type]
    est = merged.estimates["across_batches.loss"]
    assert est.value == pytest.approx(sum(singles) / 3, rel=1e-5)
    assert est.samples == 3 and est.low is not None and est.low <= est.value <= (est.high or 0)
    assert merged.metrics["batches"] == 3
    assert _loss(merged) == pytest.approx(singles[0], rel=1e-6)  # the base is the first batch


def test_the_child_target_stages_and_merges_every_batch(
    files: dict[str, Path | list[Path]], one_torch_thread: None
) -> None:
    batches = files["batches"]
    assert isinstance(batches, list)
    names = batch_file_names(3)
    payload = {
        "options": {"loss": None},
        "batches": names,
        "files": {MODEL_FILE: str(files["model"]), **{n: str(p) for n, p in zip(names, batches, strict=True)}},
    }
    seen: list[float] = []
    result = analyze(payload, lambda phase, fraction: seen.append(fraction))
    report = Report.model_validate_json(result["report"])
    assert report.estimates["across_batches.loss"].samples == 3
    assert seen == sorted(seen) and seen[-1] <= 1.0  # one bar over all batches, never going back


def test_the_child_refuses_too_many_batches_before_loading_any() -> None:
    names = batch_file_names(MAX_BATCH_FILES + 1)
    payload = {"options": {}, "batches": names, "files": {MODEL_FILE: "/nonexistent.pt2"}}
    with pytest.raises(ChildFailure, match="between 1 and 16 batches, got 17"):
        analyze(payload, lambda phase, fraction: None)


def test_in_process_analyze_takes_batches(one_torch_thread: None) -> None:
    report = gradhealth.analyze(_model(), "cross_entropy", batches=[_batch(1), _batch(2, 5)])
    assert report.estimates["across_batches.loss"].samples == 2
    with pytest.raises(ValueError, match="batches"):
        gradhealth.analyze(_model(), "cross_entropy", *_batch(1), batches=[_batch(2)])


def test_cli_takes_repeated_batch(files: dict[str, Path | list[Path]]) -> None:
    batches = files["batches"]
    assert isinstance(batches, list)
    args = ["analyze", "--model", str(files["model"]), "--quiet"]
    for b in batches:
        args += ["--batch", str(b)]
    done = subprocess.run([sys.executable, "-m", "gradhealth.cli", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = Report.model_validate(json.loads(done.stdout))
    assert report.estimates["across_batches.loss"].samples == 3
    too_many = ["analyze", "--model", str(files["model"])] + ["--batch", str(batches[0])] * 17
    refused = subprocess.run(
        [sys.executable, "-m", "gradhealth.cli", *too_many], capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 2 and "at most 16" in refused.stderr


def test_a_batch_that_does_not_fit_is_named(
    files: dict[str, Path | list[Path]], tmp_path: Path, one_torch_thread: None
) -> None:
    batches = files["batches"]
    assert isinstance(batches, list)
    misfit = gradhealth.save_batch(tmp_path / "misfit.safetensors", torch.randn(8, 5), torch.randint(0, 3, (8,)))
    names = batch_file_names(2)
    payload = {
        "options": {},
        "batches": names,
        "files": {MODEL_FILE: str(files["model"]), names[0]: str(batches[0]), names[1]: str(misfit)},
    }
    with pytest.raises(ChildFailure, match="batch 2 of 2") as caught:
        analyze(payload, lambda phase, fraction: None)
    assert caught.value.code != "engine_error"


def test_the_noise_checks_estimates_are_merged_without_naming_them(one_torch_thread: None) -> None:
    report = gradhealth.analyze(
        _model(), "cross_entropy", batches=[_batch(1, 16), _batch(2, 16)], checks=("standard", "noise")
    )
    own = {k for k in report.estimates if not k.startswith("across_batches.")}
    assert own and all(f"across_batches.{k}" in report.estimates for k in own)
