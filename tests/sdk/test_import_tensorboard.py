"""`gradhealth import-tensorboard`: event files written by torch's SummaryWriter, mapped, uploaded, diagnosed.

The stored gradient norms are checked against norms computed from the gradients themselves while the
event files were written; hostile files (a huge declared length, bad checksums, truncation) are refused
or cut where TensorBoard would cut them, before anything large is allocated.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import gradhealth
from gradhealth.cli import main

from .servers import Served

pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install -e '.[tensorboard]'")
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from gradhealth.integrations.tensorboard import MAX_RECORD_BYTES, TensorBoardImportError, load  # noqa: E402

DIVERGE_AT = 60


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[gradhealth.Client]:
    with gradhealth.Client(base_url=served.base_url, api_key=served.admin("create-project", "tb").strip()) as c:
        yield c


def _histogrammable(p: torch.Tensor) -> bool:
    """add_histogram raises on non-finite values and past its largest bucket (1e20): a diverged run stops there."""
    return all(bool(t.isfinite().all()) and float(t.abs().max()) < 1e12 for t in (p.detach(), p.grad))


def _write_run(log_dir: Path, steps: int, naming: str, every: int = 1) -> dict[int, dict[str, tuple[float, float]]]:
    """Train a small MLP (its lr jumps at DIVERGE_AT) logging with SummaryWriter; return {step: {layer: (norm, max)}}."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(256, 16)
    y = x[:, :4].sum(dim=1, keepdim=True).tanh()
    truth: dict[int, dict[str, tuple[float, float]]] = {}
    with SummaryWriter(str(log_dir)) as writer:
        for step in range(steps):
            if step == DIVERGE_AT:
                opt.param_groups[0]["lr"] = 3.0
            loss = nn.functional.mse_loss(model(x[step % 8 * 32 : step % 8 * 32 + 32]), y[step % 8 * 32 :][:32])
            opt.zero_grad()
            loss.backward()
            if step % every == 0:
                truth[step] = {}
                writer.add_scalar("train/loss" if naming == "wandb" else "loss", loss.item(), step)
                writer.add_scalar("lr", opt.param_groups[0]["lr"], step)
                writer.add_scalar("accuracy", 0.5, step)  # not mappable: listed as ignored
                for layer in ("0", "2"):
                    grads = [p.grad for p in model[int(layer)].parameters()]
                    norm = float(torch.cat([g.flatten() for g in grads]).norm())
                    truth[step][layer] = (norm, max(float(g.abs().max()) for g in grads))
                    for pname, p in model[int(layer)].named_parameters():
                        if naming == "wandb" and _histogrammable(p):  # wandb.watch naming: one per parameter
                            writer.add_histogram(f"gradients/{layer}.{pname}", p.grad, step)
                            writer.add_histogram(f"parameters/{layer}.{pname}", p.detach(), step)
                    if naming == "scalars":  # a hand-written loop: one norm per layer
                        writer.add_scalar(f"grad_norm/{layer}", norm, step)
            opt.step()
    return truth


def test_wandb_style_histograms_are_imported_and_diagnosed(
    client: gradhealth.Client, served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = _write_run(tmp_path / "run", 120, "wandb")
    argv = ["import-tensorboard", str(tmp_path / "run"), "--server", served.base_url, "--api-key", client.api_key]
    assert main([*argv, "--format", "json", "--name", "tb-wandb"]) == 0
    report = gradhealth.Report.model_validate(json.loads(capsys.readouterr().out))
    diverged = [f for f in report.findings_at_least("error") if f.rule in ("loss_divergence", "non_finite")]
    assert diverged and all(f.step is not None and f.step >= DIVERGE_AT for f in diverged), report.findings
    run = next(r for r in client.runs.list() if r.name == "tb-wandb")
    for layer in ("0", "2"):
        norms = client.runs.history(run.id, layer, "grad_norm")
        got = dict(zip(norms["steps"], norms["values"], strict=True))  # steps with histograms (finite, < 1e12)
        assert set(range(DIVERGE_AT)) <= set(got)
        assert list(got.values()) == pytest.approx([truth[s][layer][0] for s in got], rel=1e-4)
        maxima = client.runs.history(run.id, layer, "grad_max_abs")
        assert maxima["values"] == pytest.approx([truth[s][layer][1] for s in maxima["steps"]], rel=1e-6)


def test_scalar_norms_logged_every_few_steps_keep_their_stride(tmp_path: Path) -> None:
    truth = _write_run(tmp_path / "run", 40, "scalars", every=5)
    imported = load(tmp_path / "run")
    assert imported.layers == ["0", "2"] and imported.steps == list(range(0, 40, 5))
    assert imported.strides == [1] + [5] * 7
    assert imported.metrics["grad_norm"][:, 1].tolist() == pytest.approx([truth[s]["2"][0] for s in range(0, 40, 5)])
    assert imported.tags["accuracy"] == "ignored" and imported.tags["grad_norm/2"] == "grad:2"
    assert imported.loss[0] is not None and imported.lr == pytest.approx([0.05] * 8)


def test_logs_without_gradients_are_refused_with_the_tags_seen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with SummaryWriter(str(tmp_path / "run")) as writer:
        for step in range(5):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
            writer.add_scalar("val/accuracy", 0.5, step)
    assert main(["import-tensorboard", str(tmp_path / "run"), "--server", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "no gradient tags to map" in err and "loss" in err and "val/accuracy" in err
    assert main(["import-tensorboard", str(tmp_path / "nothing-here")]) == 2
    assert "not a directory" in capsys.readouterr().err


def _record(data: bytes, length: int | None = None) -> bytes:
    header = struct.pack("<Q", len(data) if length is None else length)
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def _valid_file(tmp_path: Path) -> Path:
    _write_run(tmp_path / "run", 6, "wandb")
    [path] = (tmp_path / "run").glob("*tfevents*")
    return path


def test_a_huge_declared_length_is_refused_before_reading(tmp_path: Path) -> None:
    path = _valid_file(tmp_path)
    with path.open("ab") as handle:
        handle.write(_record(b"x" * 16, length=2**62))  # a length checksum that matches: only the cap stops it
    with pytest.raises(TensorBoardImportError, match=f"declares {2**62} bytes, more than the {MAX_RECORD_BYTES}"):
        load(tmp_path / "run")


def test_corrupt_checksums_are_refused(tmp_path: Path) -> None:
    path = _valid_file(tmp_path)
    good = path.read_bytes()
    body_at = len(good) // 2
    path.write_bytes(good[:body_at] + bytes([good[body_at] ^ 0xFF]) + good[body_at + 1 :])
    with pytest.raises(TensorBoardImportError, match="checksum"):
        load(tmp_path / "run")
    path.write_bytes(good[:8] + b"\0\0\0\0" + good[12:])  # the first record's length checksum
    with pytest.raises(TensorBoardImportError, match="record 0 at byte 0 fails its length checksum"):
        load(tmp_path / "run")


def test_a_truncated_file_is_read_up_to_its_last_whole_record(tmp_path: Path) -> None:
    path = _valid_file(tmp_path)
    whole = load(tmp_path / "run")
    path.write_bytes(path.read_bytes()[:-7])  # a writer killed in its last record
    cut = load(tmp_path / "run")
    assert cut.steps == whole.steps[: len(cut.steps)] and 0 < len(cut.steps) <= len(whole.steps)
    assert (cut.metrics["grad_norm"] == whole.metrics["grad_norm"][: len(cut.steps)]).all()
