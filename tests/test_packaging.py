"""gradhealth.package / save_batch round-trips, and the errors users see when they get it wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from gradhealth.diagnostics import (
    AnalysisOptions,
    ExportUnsupportedError,
    InputError,
    analyze_files,
    analyze_module,
    load_package,
    read_batch,
)

import gradhealth


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def _batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(n, 6), torch.randint(0, 3, (n,))


def _no_dropout_report(report):  # type: ignore[no-untyped-def]
    return {layer.name: layer.grad_norm for layer in report.layers if layer.grad_norm is not None}


def test_package_round_trip_gives_the_same_report_as_in_memory(tmp_path: Path) -> None:
    model, (x, y) = _mlp(), _batch()
    gradhealth.package(model, "cross_entropy", x, y, tmp_path / "m.pt2")
    gradhealth.save_batch(tmp_path / "b.safetensors", x, y, dataset="synthetic")
    from_files = analyze_files(tmp_path / "m.pt2", tmp_path / "b.safetensors")
    in_memory = analyze_module(_mlp(), "cross_entropy", x, y)
    assert from_files.model.format == "torch.export"
    assert _no_dropout_report(from_files) == pytest.approx(_no_dropout_report(in_memory), rel=1e-5)
    assert [layer.name for layer in from_files.layers][:2] == ["0", "1"]


def test_dynamic_batch_dimension(tmp_path: Path) -> None:
    model, (x, y) = _mlp(), _batch(12)
    gradhealth.package(model, "cross_entropy", x, y, tmp_path / "m.pt2")
    x2, y2 = _batch(40)
    gradhealth.save_batch(tmp_path / "b.safetensors", x2, y2)
    report = analyze_files(tmp_path / "m.pt2", tmp_path / "b.safetensors")
    assert report.metrics["batch_size"] == 40


def test_custom_loss_callable_and_several_inputs(tmp_path: Path) -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(3, 8)
            self.head = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.a(x) + self.b(z))).squeeze(-1)

    def huber_per_sample(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(out, target, reduction="none", delta=0.5)

    torch.manual_seed(0)
    x, z, y = torch.randn(10, 4), torch.randn(10, 3), torch.randn(10)
    gradhealth.package(TwoInputs(), huber_per_sample, (x, z), y, tmp_path / "m.pt2")
    gradhealth.save_batch(tmp_path / "b.safetensors", (x, z), y)
    inputs, targets = read_batch(tmp_path / "b.safetensors")
    assert len(inputs) == 2 and targets.shape == (10,)
    report = analyze_files(tmp_path / "m.pt2", tmp_path / "b.safetensors")
    assert {layer.name for layer in report.layers} >= {"a", "b", "head"}


def test_scalar_loss_is_refused_with_advice() -> None:
    x, y = _batch()
    with pytest.raises(InputError, match="reduction='none'"):
        analyze_module(_mlp(), lambda out, t: F.cross_entropy(out, t), x, y)


def test_unknown_loss_name_lists_the_known_ones() -> None:
    x, y = _batch()
    with pytest.raises(InputError, match="cross_entropy"):
        analyze_module(_mlp(), "crossentropy", x, y)


def test_untraceable_model_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum().item() > 0:  # Python branch on data: torch.export cannot trace it
                return self.fc(x)
            return -self.fc(x)

    x, y = _batch()
    with pytest.raises(ExportUnsupportedError) as info:
        gradhealth.package(DataDependent(), "cross_entropy", x, y, tmp_path / "m.pt2")
    message = str(info.value)
    assert "torchscript" in message.lower() and "factory" in message
    assert message.index("What to do") < 1000 and "def forward" not in message  # cause and remedy, no graph
    assert "def forward" not in capsys.readouterr().err  # torch's partial-graph dump is held back
    assert "GRADHEALTH_EXPORT_DEBUG=1" in message
    monkeypatch.setenv("GRADHEALTH_EXPORT_DEBUG", "1")
    with pytest.raises(ExportUnsupportedError) as info:
        gradhealth.package(DataDependent(), "cross_entropy", x, y, tmp_path / "m.pt2")
    assert "def forward" in str(info.value)


def test_torchscript_archives_are_refused_with_the_way_to_a_pt2(tmp_path: Path) -> None:
    model, (x, y) = _mlp(), _batch()
    torch.jit.save(torch.jit.trace(model, (x,)), str(tmp_path / "m.pt"))
    gradhealth.save_batch(tmp_path / "b.safetensors", x, y)
    with pytest.raises(InputError) as info:
        analyze_files(tmp_path / "m.pt", tmp_path / "b.safetensors")
    assert "TorchScript" in str(info.value) and "gradhealth.package(" in str(info.value)


def test_plain_exported_model_needs_a_named_loss(tmp_path: Path) -> None:
    model, (x, y) = _mlp(), _batch()
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model.train(), (x,), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(tmp_path / "plain.pt2"))
    gradhealth.save_batch(tmp_path / "b.safetensors", x, y)
    with pytest.raises(InputError, match="name the loss"):
        analyze_files(tmp_path / "plain.pt2", tmp_path / "b.safetensors")
    report = analyze_files(tmp_path / "plain.pt2", tmp_path / "b.safetensors", AnalysisOptions(loss="cross_entropy"))
    assert _no_dropout_report(report) == pytest.approx(
        _no_dropout_report(analyze_module(_mlp(), "cross_entropy", x, y)), rel=1e-5
    )


def test_batch_that_does_not_fit_the_model(tmp_path: Path) -> None:
    model, (x, y) = _mlp(), _batch()
    gradhealth.package(model, "cross_entropy", x, y, tmp_path / "m.pt2")
    gradhealth.save_batch(tmp_path / "b.safetensors", torch.randn(12, 7), y)
    with pytest.raises(InputError, match="failed on this batch"):
        analyze_files(tmp_path / "m.pt2", tmp_path / "b.safetensors")


def test_batch_files_are_validated(tmp_path: Path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="safetensors"):
        read_batch(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"inputs": torch.zeros(3, 2)}, str(tmp_path / "no_targets.safetensors"))
    with pytest.raises(InputError, match="targets"):
        read_batch(tmp_path / "no_targets.safetensors")
    save_file({"inputs": torch.zeros(3, 2), "targets": torch.zeros(4)}, str(tmp_path / "mismatch.safetensors"))
    with pytest.raises(InputError, match="batch dimension"):
        read_batch(tmp_path / "mismatch.safetensors")


def test_non_archive_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model.pt2").write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match="not a model package"):
        load_package(tmp_path / "model.pt2")


def test_frozen_layers_are_not_reported_as_unused() -> None:
    model, (x, y) = _mlp(), _batch()
    for p in model[0].parameters():
        p.requires_grad_(False)
    report = analyze_module(model, "cross_entropy", x, y)
    assert not report.findings_for("unused_parameters"), report.summary
    assert next(layer for layer in report.layers if layer.name == "0").grad_norm is None
