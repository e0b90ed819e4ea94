"""Helpers shared by the watch() tests (no tests here): a recording sink and a plain-autograd reference."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

METRICS = ["grad_norm", "grad_max_abs", "nonfinite", "weight_norm", "update_norm"]
RTOL = 1e-5


def decode(body: bytes) -> dict[str, Any]:
    """A msgpack log batch with its metric bins as (steps, layers) float32 arrays."""
    batch = msgpack.unpackb(body, raw=False)
    n = len(batch["steps"])
    batch["metrics"] = {k: np.frombuffer(v, dtype="<f4").reshape(n, -1) for k, v in batch["metrics"].items()}
    return batch


class RecordingRuns:
    """In-memory stand-in for client.runs: keeps every create() and every decoded append()."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.batches: list[dict[str, Any]] = []
        self.calls = 0
        self.lock = threading.Lock()

    def create(self, name: str, layers: list[dict], metrics: list[str], config: dict, webhook_url: Any = None) -> Any:
        with self.lock:
            self.calls += 1
            self.created.append({"name": name, "layers": layers, "metrics": metrics, "config": config})
        return SimpleNamespace(id="run-1", name=name, num_layers=len(layers), metrics=metrics)

    def append(self, run_id: str, body: bytes, **_: Any) -> dict[str, Any]:
        with self.lock:
            self.calls += 1
            self.batches.append(decode(body))
        return {"stored": True}

    def report(self, run_id: str) -> str:
        return f"report of {run_id}"

    def steps(self) -> dict[int, dict[str, Any]]:
        """Per recorded step: loss, lr and each metric as a per-layer array."""
        out: dict[int, dict[str, Any]] = {}
        for batch in self.batches:
            for i, step in enumerate(batch["steps"]):
                assert step not in out, f"step {step} shipped twice"
                row = {"loss": batch["loss"][i], "lr": batch["lr"][i]}
                row.update({m: batch["metrics"][m][i] for m in METRICS})
                out[step] = row
        return out


def recording_client() -> Any:
    return SimpleNamespace(runs=RecordingRuns())


def count_all_reduce() -> tuple[dict[str, int], Callable[[], None]]:
    """Wrap torch.distributed.all_reduce to count its calls (watch() may add one per step); returns the restorer too."""
    import torch.distributed as dist

    calls = {"all_reduce": 0}
    original = dist.all_reduce

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["all_reduce"] += 1
        return original(*args, **kwargs)

    dist.all_reduce = counting  # type: ignore[assignment]

    def restore() -> None:
        dist.all_reduce = original  # type: ignore[assignment]

    return calls, restore


def layer_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The reference's own idea of the layers: named_modules() with their direct parameters."""
    return {
        name or "(root)": list(module.parameters(recurse=False))
        for name, module in model.named_modules()
        if list(module.parameters(recurse=False))
    }


def _norm(tensors: Iterable[torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


@dataclass
class Reference:
    """Per-layer numbers computed by hand around each optimizer step of an identical model."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    steps: dict[int, dict[str, Any]] = field(default_factory=dict)
    _before: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    _row: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = layer_params(self.model)

    def before_step(self, step: int) -> None:
        """Call after backward, right before optimizer.step()."""
        row: dict[str, Any] = {"grad_norm": [], "grad_max_abs": [], "nonfinite": [], "weight_norm": []}
        for params in self.layers.values():
            grads = [p.grad for p in params if p.grad is not None]
            row["grad_norm"].append(_norm(grads))
            row["grad_max_abs"].append(max((float(g.abs().max()) for g in grads), default=0.0))
            row["nonfinite"].append(sum(int(not torch.isfinite(g).all()) for g in grads))
            row["weight_norm"].append(_norm(p.detach() for p in params))
        if self.optimizer is not None:
            row["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self._before = {n: [p.detach().clone() for p in ps] for n, ps in self.layers.items()}
        self._row = row
        self.steps[step] = row

    def after_step(self) -> None:
        """Call right after optimizer.step()."""
        self._row["update_norm"] = [
            _norm(p.detach() - w for p, w in zip(ps, self._before[n], strict=True)) for n, ps in self.layers.items()
        ]

    def train(self, data: list[tuple[torch.Tensor, torch.Tensor]]) -> Reference:
        """Run the plain loop the watched tests train (MSE loss, optimizer.step()), measuring every step."""
        assert self.optimizer is not None
        for step, (x, y) in enumerate(data):
            F.mse_loss(self.model(x), y).backward()
            self.before_step(step)
            self.optimizer.step()
            self.after_step()
            self.optimizer.zero_grad()
        return self


def assert_matches(
    logged: dict[int, dict[str, Any]],
    reference: dict[int, dict[str, Any]],
    metrics: Iterable[str] = ("grad_norm", "grad_max_abs", "nonfinite", "weight_norm", "update_norm"),
    rtol: float = RTOL,
    atol: float = 1e-7,
) -> None:
    """Every logged number equals the reference where it was measured (NaN = not measured)."""
    assert sorted(logged) == sorted(reference), (sorted(logged), sorted(reference))
    for step, row in logged.items():
        for metric in metrics:
            got, want = np.asarray(row[metric], dtype=np.float64), np.asarray(reference[step][metric])
            measured = ~np.isnan(got)
            np.testing.assert_allclose(
                got[measured], want[measured], rtol=rtol, atol=atol, err_msg=f"{metric} at step {step}"
            )
        if "lr" in reference[step]:
            assert row["lr"] == pytest.approx(reference[step]["lr"], rel=1e-6)


class Net(nn.Module):
    """A small model with nesting, a frozen layer and a layer the forward never uses."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.LayerNorm(width))
        self.frozen = nn.Linear(width, width)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(width, 1)
        self.unused = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.frozen(self.encoder(x)))) * self.scale


def twin(factory: Callable[[], nn.Module], seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Two identical models: one watched, one for the reference."""
    torch.manual_seed(seed)
    a = factory()
    b = factory()
    b.load_state_dict(a.state_dict())
    return a, b


def batches(n: int, batch: int = 32, features: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, features, generator=gen), torch.randn(batch, 1, generator=gen)) for _ in range(n)]
