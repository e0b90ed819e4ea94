"""GradHealthCallback in real Hugging Face `Trainer.train()` runs on CPU against a real `gradhealth serve`.

The stored numbers are checked against what the model and a probe callback saw: every micro-batch's
loss, and each layer's gradient norm just before the optimizer step (divided by the GradScaler's scale
where one is in use: watch() must store unscaled gradients).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradhealth
from gradhealth.actions import stop_training

from .servers import Served

transformers = pytest.importorskip("transformers", reason="the hf extra: pip install -e '.[hf]'")
pytest.importorskip("accelerate", reason="the hf extra: pip install -e '.[hf]'")
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from gradhealth.integrations.transformers import GradHealthCallback  # noqa: E402

B = 8  # records per batch (flush_interval of an hour): the shipping interval, in optimizer steps
CONFIRM = 10  # loss_divergence confirms a rise within 10 logged steps


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[gradhealth.Client]:
    with gradhealth.Client(base_url=served.base_url, api_key=served.admin("create-project", "hf").strip()) as c:
        yield c


class Regressor(nn.Module):
    """A small MLP with the Trainer's calling convention; it records the loss of every micro-batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2 = nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1)
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.fc2(self.act(self.fc1(x)))
        loss = nn.functional.mse_loss(out, labels)
        self.losses.append(float(loss.detach()))
        return {"loss": loss, "logits": out}


class Probe(TrainerCallback):  # type: ignore[misc]
    """Reads each layer's gradient norm before the step; optionally overflows one step or raises the lr."""

    def __init__(self, model: Regressor, overflow_at: int | None = None, diverge_at: int | None = None) -> None:
        self.model, self.overflow_at, self.diverge_at = model, overflow_at, diverge_at
        self.grad_norms: dict[int, dict[str, float]] = {}
        self.micro_batches: dict[int, int] = defaultdict(int)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.diverge_at:
            for group in kwargs["optimizer"].param_groups:
                group["lr"] = 3.0
            kwargs["lr_scheduler"].base_lrs = [3.0 for _ in kwargs["lr_scheduler"].base_lrs]

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        scaler = getattr(kwargs["optimizer"], "scaler", None)
        scale = scaler.get_scale() if scaler is not None else 1.0
        if state.global_step == self.overflow_at:
            self.model.fc2.weight.grad[0, 0] = float("inf")
        self.grad_norms[state.global_step] = {
            name: float(torch.cat([p.grad.flatten() for p in getattr(self.model, name).parameters()]).norm()) / scale
            for name in ("fc1", "fc2")
        }


class Logs(TrainerCallback):  # type: ignore[misc]
    """What the reporters get: the logs after every callback's on_log (registered after GradHealthCallback)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.seen.append(dict(logs or {}))


def _dataset() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(576, 16, generator=generator)
    y = x[:, :4].sum(dim=1, keepdim=True).tanh()
    return [{"x": x[i], "labels": y[i]} for i in range(len(x))]


def _train(
    root: Path,
    callback: GradHealthCallback,
    probe: Probe,
    max_steps: int,
    scaler: Any = None,
    extra: tuple[TrainerCallback, ...] = (),
    **args: Any,
) -> Trainer:
    model = probe.model
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(root),
            max_steps=max_steps,
            per_device_train_batch_size=16,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            logging_steps=4,
            disable_tqdm=True,
            **args,
        ),
        train_dataset=_dataset(),
        optimizers=(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), None),
        callbacks=[probe, callback, *extra],
    )
    if scaler is not None:  # fp16 AMP is GPU-only in accelerate; its GradScaler path is the same on CPU
        trainer.accelerator.scaler = scaler
    trainer.train()
    return trainer


def _options(**extra: Any) -> dict[str, Any]:
    return {"budget": None, "flush_interval": 3600.0, "batch_steps": B, "param_every": 1, **extra}


def test_accumulation_gives_one_record_per_optimizer_step_with_the_models_numbers(
    client: gradhealth.Client, tmp_path: Path
) -> None:
    model = Regressor()
    probe, callback = Probe(model), GradHealthCallback("hf-accumulate", client, **_options())
    trainer = _train(tmp_path, callback, probe, max_steps=12, gradient_accumulation_steps=3)
    assert trainer.state.global_step == 12 and len(model.losses) == 36
    assert callback.watch is not None and callback.report is not None
    run_id = callback.watch.run_id or ""
    assert callback.report.metrics["steps"] == 12  # not 36 micro-batches
    for layer in ("fc1", "fc2"):
        history = client.runs.history(run_id, layer, "grad_norm")
        assert history["steps"] == list(range(12))
        assert history["values"] == pytest.approx([probe.grad_norms[s][layer] for s in range(12)], rel=1e-5)
    timeline = callback.report.timeline
    assert timeline is not None
    expected = [sum(model.losses[3 * s : 3 * s + 3]) / 3 for s in range(12)]
    assert timeline.loss == pytest.approx(expected, rel=1e-5)


def test_stop_training_ends_a_diverging_train_within_one_shipping_interval(
    client: gradhealth.Client, tmp_path: Path
) -> None:
    model = Regressor()
    probe = Probe(model, diverge_at=40)
    callback = GradHealthCallback("hf-diverge", client, on_finding=stop_training, **_options())
    logs = Logs()
    trainer = _train(tmp_path, callback, probe, max_steps=300, extra=(logs,))
    assert callback.findings, "no finding reached the callback"
    first, taken = callback.findings[0], trainer.state.global_step
    assert first.step is not None and 40 <= first.step < taken < 300
    assert taken <= ((first.step + CONFIRM) // B + 2) * B, (first, taken)
    assert callback.report is not None and callback.report.metrics["steps"] == taken
    assert [entry["gradhealth_findings"] for entry in logs.seen][-1] == len(callback.findings)


def test_grad_scaler_overflow_is_a_skipped_step_and_grads_are_unscaled(
    client: gradhealth.Client, tmp_path: Path
) -> None:
    model = Regressor()
    probe, callback = Probe(model, overflow_at=5), GradHealthCallback("hf-amp", client, **_options())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer = _train(tmp_path, callback, probe, max_steps=16, scaler=scaler)
    assert callback.watch is not None and callback.watch.skipped_steps == 1 and scaler.get_scale() < 2.0**10
    assert trainer.accelerator.optimizer_step_was_skipped is False  # the last step was taken
    assert callback.report is not None and not callback.report.findings_for("non_finite")
    history = client.runs.history(callback.watch.run_id or "", "fc2", "grad_norm")
    assert history["steps"] == [s for s in range(16) if s != 5] and history["nonfinite_steps"] == []
    assert history["values"] == pytest.approx([probe.grad_norms[s]["fc2"] for s in history["steps"]], rel=1e-5)
