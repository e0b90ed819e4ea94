"""Real short training runs watched end to end: watch() -> `gradhealth serve` -> run rules -> report.

Each run trains a small model on synthetic data for a few hundred steps with a fault injected at
a known step (and layer); the run report must name that step (± the logging interval) and layer,
and healthy runs must get no finding of severity error or worse.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from gradhealth.sdk.watching import WatchWarning
from torch import nn

import gradhealth

from .servers import Served

STEPS = 240


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[gradhealth.Client]:
    with gradhealth.Client(base_url=served.base_url, api_key=served.admin("create-project", "watch-e2e").strip()) as c:
        yield c


def make_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def data(seed: int, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=generator)
    y = (x[:, :4].sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=generator)).tanh()
    return x, y


Hook = Callable[[int, nn.Sequential, torch.optim.Optimizer], None]


def train(
    client: gradhealth.Client,
    name: str,
    *,
    lr: float = 0.05,
    optimizer: str = "sgd",
    every: int = 1,
    before_step: Hook | None = None,
    seed: int = 0,
    batch_steps: int = 256,
) -> gradhealth.Report:
    """A plain training loop wrapped in watch() (the two added lines are marked)."""
    model = make_model(seed)
    x, y = data(seed)
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=lr)
    )
    with gradhealth.watch(
        model, opt, run=name, every=every, client=client, flush_interval=0.2, budget=None, batch_steps=batch_steps
    ) as watch:  # added; budget=None: exact steps for the asserts
        for step in range(STEPS):
            batch = torch.randint(0, x.shape[0], (32,), generator=torch.Generator().manual_seed(step))
            loss = nn.functional.mse_loss(model(x[batch]), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if before_step is not None:
                before_step(step, model, opt)
            opt.step()
            watch.log(loss=loss)  # added
    return watch.report()


def errors(report: gradhealth.Report) -> list[str]:
    return [f"{f.rule}@{f.step}" for f in report.findings_at_least("error")]


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.05), ("adam", 1e-3)])
def test_healthy_runs_get_no_error(client: gradhealth.Client, optimizer: str, lr: float) -> None:
    report = train(client, f"healthy-{optimizer}", optimizer=optimizer, lr=lr)
    assert report.kind == "run" and report.metrics["steps"] == STEPS
    assert not errors(report), report.findings
    assert report.timeline is not None and len(report.timeline.steps) == STEPS


def test_divergence_from_a_too_high_lr_is_found_at_its_step(client: gradhealth.Client) -> None:
    def raise_lr(step: int, _: nn.Sequential, opt: torch.optim.Optimizer) -> None:
        if step == 120:
            for group in opt.param_groups:
                group["lr"] = 3.0

    report = train(client, "diverging", before_step=raise_lr)
    [finding] = report.findings_for("loss_divergence")
    assert finding.severity in ("error", "critical")
    assert 120 <= finding.step <= 124, finding


@pytest.mark.parametrize("every", [1, 5])
def test_nan_injected_in_a_known_layer_at_a_known_step(client: gradhealth.Client, every: int) -> None:
    def poison(step: int, model: nn.Sequential, _: torch.optim.Optimizer) -> None:
        if step == 150:
            model[2].weight.grad[0, 0] = float("nan")

    report = train(client, f"nan-every-{every}", before_step=poison, every=every)
    [finding] = report.findings_for("non_finite")
    assert finding.severity in ("error", "critical")
    assert 150 <= finding.step <= 150 + every, finding
    assert finding.layers[0] == "2", finding


def test_a_throttled_run_shipped_in_small_batches_is_stored_whole(client: gradhealth.Client) -> None:
    """Batches of 3 records at every=5 end between the 3rd loss (a stride's first loss level) and the 9th (its first
    window noise), as a slow machine's 0.2 s batches did: the service once answered 500 to them, every retry."""

    def poison(step: int, model: nn.Sequential, _: torch.optim.Optimizer) -> None:
        if step == 150:
            model[2].weight.grad[0, 0] = float("nan")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WatchWarning)
        report = train(client, "nan-small-batches", before_step=poison, every=5, batch_steps=3)
    assert not [str(w.message) for w in caught if issubclass(w.category, WatchWarning)]
    assert report.timeline is not None and len(report.timeline.steps) == STEPS // 5
    [finding] = report.findings_for("non_finite")
    assert 150 <= finding.step <= 155 and finding.layers[0] == "2", finding


def test_a_layer_frozen_mid_run_is_stalled(client: gradhealth.Client) -> None:
    def freeze(step: int, model: nn.Sequential, _: torch.optim.Optimizer) -> None:
        if step >= 100:
            for p in model[2].parameters():
                p.requires_grad_(False)
                p.grad = None

    report = train(client, "frozen", before_step=freeze)
    stalled = report.findings_for("stalled_layer")
    assert stalled and stalled[0].layers == ["2"], report.findings
    assert 100 <= stalled[0].step <= 102
    assert not errors(report)


def test_a_warmup_spike_that_recovers_is_a_warning_at_most(client: gradhealth.Client) -> None:
    def warmup_spike(step: int, _: nn.Sequential, opt: torch.optim.Optimizer) -> None:
        for group in opt.param_groups:
            group["lr"] = 0.6 if 60 <= step < 64 else 0.05

    report = train(client, "warmup-spike", before_step=warmup_spike)
    assert not errors(report), report.findings


def test_the_report_updates_while_training(client: gradhealth.Client) -> None:
    model = make_model(3)
    x, y = data(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []
    with gradhealth.watch(model, opt, run="live", client=client, flush_interval=0.1, budget=None) as watch:
        for step in range(90):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            watch.log(loss=loss)
            if step % 30 == 29:
                watch.flush(timeout=10)
                seen.append(watch.report().metrics["steps"])
    assert seen == [30, 60, 90]
