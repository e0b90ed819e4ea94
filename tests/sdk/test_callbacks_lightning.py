"""GradHealthCallback in real Lightning fits on CPU against a real `gradhealth serve`.

The numbers the service stores are checked against what the LightningModule itself saw: the loss of
every micro-batch and each layer's gradient norm in its own on_before_optimizer_step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradhealth
from gradhealth.actions import stop_training

from .servers import Served

pl = pytest.importorskip("lightning.pytorch", reason="the lightning extra: pip install -e '.[lightning]'")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402

from gradhealth.integrations.lightning import GradHealthCallback  # noqa: E402

B = 8  # records per batch (flush_interval of an hour): the shipping interval, in optimizer steps
CONFIRM = 10  # loss_divergence confirms a rise within 10 logged steps


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[gradhealth.Client]:
    with gradhealth.Client(base_url=served.base_url, api_key=served.admin("create-project", "lightning").strip()) as c:
        yield c


class Regressor(pl.LightningModule):  # type: ignore[misc,name-defined]
    """A small MLP that records its micro-batch losses and gradient norms, and can diverge or overflow."""

    def __init__(self, lr: float = 0.05, diverge_at: int | None = None, overflow_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
        self.lr, self.diverge_at, self.overflow_at = lr, diverge_at, overflow_at
        self.losses: dict[int, list[float]] = defaultdict(list)
        self.grad_norms: dict[int, dict[str, float]] = {}

    def training_step(self, batch: Any, idx: int) -> torch.Tensor:
        x, y = batch
        if self.diverge_at is not None and self.global_step >= self.diverge_at:
            self.trainer.optimizers[0].param_groups[0]["lr"] = 3.0
        loss = nn.functional.mse_loss(self.net(x).float(), y)
        self.losses[self.global_step].append(float(loss.detach()))
        return loss

    def on_after_backward(self) -> None:
        if self.global_step == self.overflow_at:
            self.net[2].weight.grad[0, 0] = float("inf")

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.grad_norms[self.global_step] = {
            name: float(torch.cat([p.grad.flatten() for p in self.net[int(name)].parameters()]).norm())
            for name in ("0", "2")
        }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(576, 16, generator=generator)  # 36 batches: whole accumulations of 3
    return DataLoader(TensorDataset(x, x[:, :4].sum(dim=1, keepdim=True).tanh()), batch_size=16)


def _fit(module: Regressor, callback: GradHealthCallback, root: Path, max_steps: int, **trainer: Any) -> pl.Trainer:
    """A CPU fit on one device, logging to CSV; `trainer` overrides or adds Trainer arguments."""
    arguments: dict[str, Any] = {
        "max_steps": max_steps,
        "accelerator": "cpu",
        "devices": 1,
        "logger": CSVLogger(root),
        "callbacks": [callback],
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
    }
    fit = pl.Trainer(**(arguments | trainer))
    fit.fit(module, _loader())
    return fit


def _options(**extra: Any) -> dict[str, Any]:
    return {"budget": None, "flush_interval": 3600.0, "batch_steps": B, "param_every": 1, **extra}


def test_accumulated_fit_records_one_step_per_optimizer_step_with_the_modules_numbers(
    client: gradhealth.Client, tmp_path: Path
) -> None:
    module = Regressor()
    callback = GradHealthCallback("lightning-accumulate", client, **_options())
    trainer = _fit(module, callback, tmp_path, max_steps=24, accumulate_grad_batches=3)
    assert trainer.global_step == 24 and callback.watch is not None and callback.report is not None
    run_id = callback.watch.run_id
    assert run_id is not None and callback.report.metrics["steps"] == 24  # not 72 micro-batches
    for layer in ("net.0", "net.2"):
        history = client.runs.history(run_id, layer, "grad_norm")
        assert history["steps"] == list(range(24))
        expected = [module.grad_norms[step][layer[-1]] for step in range(24)]
        assert history["values"] == pytest.approx(expected, rel=1e-5)
    assert all(len(module.losses[step]) == 3 for step in range(24))
    timeline = callback.report.timeline
    assert timeline is not None and timeline.steps == list(range(24))
    assert timeline.loss == pytest.approx([sum(module.losses[s]) / 3 for s in range(24)], rel=1e-5)
    hparams = (Path(trainer.logger.log_dir) / "hparams.yaml").read_text()
    assert f"gradhealth_run_id: {run_id}" in hparams


def test_stop_training_ends_a_diverging_fit_within_one_shipping_interval(
    client: gradhealth.Client, tmp_path: Path
) -> None:
    module = Regressor(diverge_at=40)
    callback = GradHealthCallback("lightning-diverge", client, on_finding=stop_training, **_options())
    trainer = _fit(module, callback, tmp_path, max_steps=300)
    assert callback.findings, "no finding reached the callback"
    first = callback.findings[0]
    assert first.step is not None and 40 <= first.step < trainer.global_step < 300
    assert trainer.global_step <= ((first.step + CONFIRM) // B + 2) * B, (first, trainer.global_step)
    assert callback.report is not None and callback.report.metrics["steps"] == trainer.global_step
    metrics = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert f"gradhealth/{first.rule}" in metrics.split(",")


def test_amp_overflow_steps_are_skipped_not_non_finite(client: gradhealth.Client, tmp_path: Path) -> None:
    module = Regressor(overflow_at=5)
    callback = GradHealthCallback("lightning-amp", client, **_options())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer = _fit(module, callback, tmp_path, max_steps=16, plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    assert callback.watch is not None and callback.watch.skipped_steps == 1 and scaler.get_scale() < 2.0**10
    assert callback.report is not None and not callback.report.findings_for("non_finite")
    history = client.runs.history(callback.watch.run_id or "", "net.2", "grad_norm")
    assert history["steps"] == [s for s in range(trainer.global_step) if s != 5]
    assert history["nonfinite_steps"] == []
    # unscaled: the stored norms are the module's own (it reads them after Lightning's unscale_)
    assert history["values"] == pytest.approx([module.grad_norms[s]["2"] for s in history["steps"]], rel=1e-5)
