"""watch() into the run rules, without a server: what the SDK records by default is enough for them to fire."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics.run_rules import LogChunk, RunEvaluator
from gradhealth.report import Finding
from gradhealth.sdk.watching import watch
from torch import nn

from .test_watch_support import recording_client

STEPS = 240


def small_model() -> nn.Sequential:
    """Four layers: under the default param_every=10 each is a sample group of its own."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 8), nn.Linear(8, 1))


def watched_findings(stale: str | None) -> tuple[list[str], list[Finding], Any]:
    """Train with the SDK's defaults (every recorded step's batches captured), then replay them through the rules."""
    model = small_model()
    groups = [
        {"params": list(m.parameters()), "lr": 0.0 if name == stale else 0.05}
        for name, m in model.named_children()
        if list(m.parameters())
    ]
    opt = torch.optim.SGD(groups, lr=0.05)
    gen = torch.Generator().manual_seed(1)
    client = recording_client()
    with watch(model, opt, run="t", client=client, budget=None) as handle:
        for _ in range(STEPS):
            x = torch.randn(32, 8, generator=gen)
            loss = F.mse_loss(model(x), torch.sin(x[:, :1]))
            loss.backward()
            opt.step()
            opt.zero_grad()
            handle.log(loss=loss)
    layers = [layer["name"] for layer in client.runs.created[0]["layers"]]
    ev = RunEvaluator(layers)
    for batch in client.runs.batches:
        ev.update(LogChunk.of(batch["steps"], batch["loss"], batch["lr"], batch["metrics"]))
    return layers, [f for f in ev.findings() if f.rule == "stalled_layer"], client.runs.steps()


@pytest.mark.parametrize("stale", ["0", "4"])
def test_stalled_layer_fires_on_a_layer_with_lr_zero(stale: str) -> None:
    layers, found, logged = watched_findings(stale)
    assert len(layers) <= 10
    (stall,) = found
    assert stall.layers == [stale] and stall.evidence["kind"] == "no_update" and stall.severity == "warning"
    column = layers.index(stale)
    sampled = [step for step, row in sorted(logged.items()) if row["update_norm"][column] == row["update_norm"][column]]
    assert all(logged[step]["update_norm"][column] == 0 for step in sampled)
    assert stall.step == sampled[0]  # stale from the start: the layer's first sample, not "after learning before"
    per_row = {int((row["update_norm"] == row["update_norm"]).sum()) for row in logged.values()}
    assert per_row == {0, 1}  # the SDK sampled one layer per row: the case the rule used to miss


def test_stalled_layer_is_silent_when_every_layer_trains() -> None:
    _, found, _ = watched_findings(None)
    assert found == []


@pytest.mark.parametrize("every", [1, 3])
def test_batches_carry_the_recording_stride(every: int) -> None:
    """The stride (optimizer steps between records) is on the wire, so the service counts steps, not records."""
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    client = recording_client()
    with watch(model, opt, run="t", client=client, budget=None, every=every) as handle:
        for _ in range(12):
            model(torch.ones(2, 8)).sum().backward()
            opt.step()
            opt.zero_grad()
        assert handle.stride == every
    assert client.runs.batches and all(batch["stride"] == every for batch in client.runs.batches)
    assert sorted(client.runs.steps()) == list(range(0, 12, every))
