"""Model packages and batches the service tests upload: zoo models, a slow model, bad files."""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gradhealth

try:
    from tests import zoo
except ImportError:  # tests/ itself on sys.path
    import zoo  # type: ignore[no-redef]

E2E_CASES = ("deep_sigmoid_mlp", "mlp_dead_relu_negative_bias", "cnn_batchnorm")


@dataclass
class Files:
    """Paths of everything the tests upload, plus what each zoo case should report."""

    root: Path
    models: dict[str, Path]
    batches: dict[str, Path]
    expect: dict[str, dict[str, tuple[str, ...]]]
    marker: Path


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _rewrite(src: Path, dst: Path, edits: dict[str, bytes]) -> Path:
    """Copy a .pt2 zip, replacing the entries whose names end with the given suffixes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            for suffix, new in edits.items():
                if info.filename.endswith(suffix):
                    data = new
            zout.writestr(info.filename, data)
    return dst


def pickle_payload_archive(src: Path, dst: Path, marker: Path) -> Path:
    """A .pt2 whose first weight is a pickle (use_pickle) that would create `marker` when loaded."""
    with zipfile.ZipFile(src) as archive:
        name = next(n for n in archive.namelist() if n.endswith("_weights_config.json"))
        config = json.loads(archive.read(name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    return _rewrite(
        src,
        dst,
        {
            "_weights_config.json": json.dumps(config).encode(),
            "data/weights/" + first["path_name"]: pickle.dumps(_Payload(marker)),
        },
    )


def slow_conv_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Few parameters, many FLOPs: a few seconds of forward+backward on 2 CPU cores."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, padding=1), nn.ReLU()]
    for _ in range(7):
        layers += [nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    return model, torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))


def build(root: Path) -> Files:
    """Write every file once per test session."""
    models: dict[str, Path] = {}
    batches: dict[str, Path] = {}
    expect: dict[str, dict[str, tuple[str, ...]]] = {}
    for name in E2E_CASES:
        case = zoo.by_name(name)
        model, loss, inputs, targets = case.build()
        models[name] = gradhealth.package(model, loss, inputs, targets, root / f"{name}.pt2")
        batches[name] = gradhealth.save_batch(root / f"{name}.safetensors", inputs, targets)
        expect[name] = dict(case.expect)
    model, loss, inputs, targets = zoo.by_name("deep_relu_mlp_kaiming").build()
    models["relu_mlp"] = gradhealth.package(model, loss, inputs, targets, root / "relu_mlp.pt2")
    batches["relu_mlp"] = gradhealth.save_batch(root / "relu_mlp.safetensors", inputs, targets)
    with torch.no_grad():  # a regression: one middle layer's init scaled up 1000x
        model.net[24].weight.mul_(1000.0)
    models["relu_mlp_scaled"] = gradhealth.package(model, loss, inputs, targets, root / "relu_mlp_scaled.pt2")
    model, x, y = slow_conv_model()
    models["slow"] = gradhealth.package(model, "cross_entropy", x, y, root / "slow.pt2")
    batches["slow"] = gradhealth.save_batch(root / "slow.safetensors", x, y)

    torch.manual_seed(1)
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    xp, yp = torch.randn(16, 8), torch.randint(0, 3, (16,))
    exported = torch.export.export(plain, (xp,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(exported, root / "plain.pt2")
    models["plain"] = root / "plain.pt2"
    batches["plain"] = gradhealth.save_batch(root / "plain.safetensors", xp, yp)

    _, _, (cnn_x,), cnn_y = zoo.by_name("cnn_batchnorm").build()
    # The deep sigmoid MLP takes flat feature vectors: image-shaped inputs cannot fit it.
    batches["wrong_shape"] = gradhealth.save_batch(root / "wrong_shape.safetensors", cnn_x, cnn_y)
    nan_x = torch.full_like(cnn_x, float("nan"))
    batches["nan"] = gradhealth.save_batch(root / "nan.safetensors", nan_x, cnn_y)

    good = models["mlp_dead_relu_negative_bias"].read_bytes()
    (root / "truncated.pt2").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    for i in range(len(corrupt) // 3, len(corrupt) // 3 + 64):
        corrupt[i] ^= 0xFF
    (root / "corrupt.pt2").write_bytes(bytes(corrupt))
    models["truncated"], models["corrupt"] = root / "truncated.pt2", root / "corrupt.pt2"
    marker = root / "PICKLE_PAYLOAD_RAN"
    models["pickle"] = pickle_payload_archive(models["mlp_dead_relu_negative_bias"], root / "pickle.pt2", marker)
    return Files(root=root, models=models, batches=batches, expect=expect, marker=marker)
