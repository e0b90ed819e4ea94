"""Activation statistics during training: watch(activations=...) fractions equal a plain computation, and the
dead_relu / saturated_activation run rules fire where units die or saturate mid-run, with the step it began.

Runs are real watched training loops; their log batches go through the service's codec
(api/run_codec.to_log_batch) into the run-rule evaluator, as `gradhealth serve` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradhealth.api.run_codec import to_log_batch
from gradhealth.diagnostics.run_rules import LogChunk, RunEvaluator
from gradhealth.report import Finding
from gradhealth.sdk.watching import watch
from gradhealth.store.run_extra_segments import activation_rows
from torch import nn

from .sdk.test_watch_support import recording_client

STEPS, STRIDE, EVENT = 90, 3, 45
Event = Callable[[nn.Sequential], None]


def _train(model: nn.Sequential, event: Event | None = None, stride: int = STRIDE) -> Any:
    """A watched regression loop; `event` runs once at step EVENT, before that step's forward."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 8, generator=generator), torch.randn(256, 1, generator=generator)
    client = recording_client()
    with watch(model, opt, client=client, budget=None, activations=stride, distributions=False) as handle:
        for step in range(STEPS):
            if step == EVENT and event is not None:
                with torch.no_grad():
                    event(model)
            rows = torch.randint(0, 256, (32,), generator=generator)
            loss = F.mse_loss(model(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            handle.log(loss=loss)
    return client.runs


def _findings(runs: Any) -> list[Finding]:
    """The run's batches through the service's codec and the run rules."""
    created = runs.created[0]
    declared = created["config"]["activations"]
    evaluator = RunEvaluator([layer["name"] for layer in created["layers"]], None, declared)
    for raw in runs.raw:
        batch = to_log_batch(msgpack.unpackb(raw, raw=False), created["metrics"], len(created["layers"]), len(declared))
        values = {name: batch.values[i].astype(np.float64) for i, name in enumerate(created["metrics"])}
        acts = activation_rows(batch, len(declared))
        evaluator.update(LogChunk(batch.steps, batch.loss, batch.loss_logged, batch.lr, values, batch.stride, acts))
    return evaluator.findings()


@pytest.fixture(autouse=True)
def _keep_raw_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The recording client keeps each POSTed body as sent, for the codec."""
    from .sdk import test_watch_support as support

    original = support.RecordingRuns.append

    def append(self: Any, run_id: str, body: bytes, **kwargs: Any) -> dict[str, Any]:
        self.__dict__.setdefault("raw", []).append(body)
        return original(self, run_id, body, **kwargs)

    monkeypatch.setattr(support.RecordingRuns, "append", append)


def relu_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))


def tanh_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))


def push_biases_negative(model: nn.Sequential) -> None:
    model[0].bias.sub_(50.0)  # what one huge update does to the layer feeding a ReLU


def blow_up_weights(model: nn.Sequential) -> None:
    model[0].weight.mul_(60.0)


def _rule(findings: list[Finding], rule: str) -> list[Finding]:
    return [f for f in findings if f.rule == rule]


@pytest.mark.parametrize(
    ("make", "event", "rule"),
    [(relu_net, push_biases_negative, "dead_relu"), (tanh_net, blow_up_weights, "saturated_activation")],
)
def test_fires_from_the_step_units_die_and_stays_silent_on_the_healthy_run(
    make: Callable[[], nn.Sequential], event: Event, rule: str
) -> None:
    assert not [f for f in _findings(_train(make())) if f.rule in ("dead_relu", "saturated_activation")]
    found = _rule(_findings(_train(make(), event)), rule)
    assert len(found) == 1 and found[0].layers == ["1"], found
    began = found[0].evidence["began_step"]
    assert EVENT <= began < EVENT + STRIDE and found[0].step == began  # the first read at or after the event
    assert found[0].severity == "error" and found[0].evidence["fraction:1"] >= 0.9
    assert found[0].evidence["first_fraction:1"] < 0.5  # it was healthy at its first read: it died mid-run


def _plain_fractions(kind: str, inputs: torch.Tensor, output: torch.Tensor) -> tuple[float, float]:
    """dead: units never positive over the batch; saturated: elements where |f'| < 1% of its maximum over x."""
    rows = output.reshape(output.shape[0], -1)
    dead = 1.0 - float((rows > 0).any(dim=0).float().mean()) if kind == "relu" else float("nan")
    functions: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "gelu": F.gelu,
    }
    if kind not in functions:
        return dead, float("nan")
    grid = torch.linspace(-12, 12, 48001, dtype=torch.float64, requires_grad=True)
    (peak,) = torch.autograd.grad(functions[kind](grid).sum(), grid)
    x = inputs.detach().double().requires_grad_(True)
    (slope,) = torch.autograd.grad(functions[kind](x).sum(), x)
    return dead, float((slope.abs() < 0.01 * peak.abs().max()).double().mean())


def test_the_fractions_sent_equal_a_plain_computation() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 24), nn.Sigmoid(), nn.Linear(24, 16), nn.GELU())
    with torch.no_grad():
        model[2].weight.mul_(30.0)  # some sigmoid saturation to count
        model[0].bias[:6] = -100.0  # and 6 of the 24 ReLU units dead
    expected: dict[int, list[tuple[float, float]]] = {}
    seen: list[tuple[float, float]] = []
    kinds = {1: "relu", 3: "sigmoid", 5: "gelu"}
    for index, kind in kinds.items():
        model[index].register_forward_hook(
            lambda m, args, out, kind=kind: seen.append(_plain_fractions(kind, args[0], out))
        )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    client = recording_client()
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(3))
    with watch(model, opt, client=client, budget=None, activations=2, distributions=False):
        for step in range(6):
            seen.clear()
            model(x).pow(2).mean().backward()
            expected[step] = list(seen)
            opt.step()
            opt.zero_grad()
    assert client.runs.created[0]["config"]["activations"] == [
        {"name": str(i), "kind": kind} for i, kind in kinds.items()
    ]
    sent = [batch["activations"] for batch in client.runs.batches if "activations" in batch]
    steps = [step for part in sent for step in part["steps"]]
    assert steps == [0, 2, 4]
    dead = np.concatenate([np.frombuffer(p["dead"], "<f4").reshape(-1, 3) for p in sent])
    saturated = np.concatenate([np.frombuffer(p["saturated"], "<f4").reshape(-1, 3) for p in sent])
    for row, step in enumerate(steps):
        want = np.array(expected[step], dtype=np.float64)
        assert np.allclose(dead[row], want[:, 0], atol=1e-6, equal_nan=True), (step, dead[row], want[:, 0])
        assert np.allclose(saturated[row], want[:, 1], atol=2 / (40 * 24), equal_nan=True), (step, saturated[row])
    assert 0 < saturated[0, 1] < 1 and dead[0, 0] == pytest.approx(0.25)  # non-trivial fractions were compared
