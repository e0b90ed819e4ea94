"""watch(on_finding=...) against a real `gradhealth serve`: rules that act, within one shipping interval.

Shipping is made count-based (flush_interval of an hour, batch_steps=B), so "one shipping interval" is
B optimizer steps and the bound is exact in steps, whatever the machine's speed: a finding first seen
by the service in the batch that holds step c is acted on at the latest when the batch after it is
due, at step (c // B + 2) * B.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from gradhealth.sdk.watching import WatchWarning
from torch import nn

import gradhealth
from gradhealth.actions import StopTraining, checkpoint_and_continue, lower_lr, stop_training

from .servers import Served

B = 8  # records per batch: the shipping interval, in steps
STEPS = 200
DIVERGE_AT = 60
CONFIRM = 10  # loss_divergence confirms a rise on 8 of 10 logged losses: it is known by step + CONFIRM


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[gradhealth.Client]:
    with gradhealth.Client(base_url=served.base_url, api_key=served.admin("create-project", "on-finding").strip()) as c:
        yield c


def _setup(seed: int = 0) -> tuple[nn.Sequential, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    x = torch.randn(256, 16)
    y = x[:, :4].sum(dim=1, keepdim=True).tanh()
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), x, y


def _diverging_step(
    step: int, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, handle: gradhealth.Watch
) -> None:
    """One optimizer step of the loop whose lr jumps to 3.0 at DIVERGE_AT, its loss logged."""
    if step == DIVERGE_AT:
        opt.param_groups[0]["lr"] = 3.0
    batch = torch.randint(0, 256, (32,), generator=torch.Generator().manual_seed(step))
    loss = nn.functional.mse_loss(model(x[batch]), y[batch])
    opt.zero_grad()
    loss.backward()
    opt.step()
    handle.log(loss=loss)


def _train(client: gradhealth.Client, name: str, **options: object) -> tuple[int, gradhealth.Watch, list[str]]:
    """A plain loop whose lr jumps to 3.0 at DIVERGE_AT; returns the optimizer steps taken and the handle."""
    model, opt, x, y = _setup()
    taken, errors = 0, []
    handle = gradhealth.watch(
        model, opt, run=name, client=client, budget=None, flush_interval=3600.0, batch_steps=B, **options
    )
    try:
        with handle:
            for step in range(STEPS):
                _diverging_step(step, model, opt, x, y, handle)
                taken += 1
    except StopTraining as stop:
        taken += 1  # the step whose post-step hook raised was taken
        errors.append(f"{stop.finding.rule}@{stop.finding.step}")
    return taken, handle, errors


def test_stop_training_stops_a_diverging_run_within_one_shipping_interval(client: gradhealth.Client) -> None:
    taken, handle, stopped_by = _train(client, "stop-on-error", on_finding=stop_training)
    assert stopped_by, "the run was not stopped"
    [finding] = [f for f in handle.report().findings_at_least("error") if f"{f.rule}@{f.step}" == stopped_by[0]]
    assert finding.step is not None and DIVERGE_AT <= finding.step <= DIVERGE_AT + 20, finding
    known = finding.step + CONFIRM
    print(f"stopped by {stopped_by[0]} after {taken} steps")
    assert finding.step < taken <= (known // B + 2) * B, (taken, finding.step)
    assert handle.report().metrics["steps"] == taken  # every step taken before the stop reached the service


def test_only_findings_at_the_severity_are_called_and_training_goes_on(client: gradhealth.Client) -> None:
    calls: list[gradhealth.Finding] = []
    taken, handle, stopped = _train(
        client, "critical-only", on_finding=lambda f, w: calls.append(f), on_finding_severity="critical"
    )
    assert taken == STEPS and not stopped and calls
    assert all(f.severity == "critical" for f in calls)
    reported = {(f.rule, f.step) for f in handle.report().findings if f.severity == "critical"}
    assert {(f.rule, f.step) for f in calls} <= reported


def test_lower_lr_and_checkpoint_act_once_per_finding_and_training_goes_on(
    client: gradhealth.Client, tmp_path: Path
) -> None:
    seen: list[gradhealth.Finding] = []
    lower, save = lower_lr(0.1), checkpoint_and_continue(tmp_path / "ckpt-{rule}-{step}.pt")

    def act(finding: gradhealth.Finding, watch: gradhealth.Watch) -> None:
        seen.append(finding)
        lower(finding, watch)
        save(finding, watch)

    taken, handle, stopped = _train(client, "lower-lr", on_finding=act)
    assert taken == STEPS and not stopped and seen
    assert len({(f.rule, f.step) for f in seen}) == len(seen)  # each finding once
    assert handle.optimizer is not None
    assert handle.optimizer.param_groups[0]["lr"] == pytest.approx(3.0 * 0.1 ** len(seen))
    for finding in seen:
        saved = torch.load(tmp_path / f"ckpt-{finding.rule}-{finding.step}.pt", weights_only=True)
        assert set(saved) == {"model", "optimizer", "finding"} and saved["finding"]["rule"] == finding.rule


def _diverge_unshipped(client: gradhealth.Client, name: str, on_finding: Any, fail: bool = False) -> gradhealth.Watch:
    """A diverging loop of which nothing ships before close(): one batch holds the whole run."""
    model, opt, x, y = _setup()
    handle = gradhealth.watch(
        model, opt, run=name, client=client, budget=None, flush_interval=3600.0, batch_steps=10_000,
        on_finding=on_finding,
    )  # fmt: skip
    with handle:
        for step in range(DIVERGE_AT + 40):
            _diverging_step(step, model, opt, x, y, handle)
        assert handle.buffered == DIVERGE_AT + 39  # nothing delivered before close() (the last record is still open)
        if fail:
            raise KeyError("the loop's own error")
    return handle


def test_findings_in_the_answer_to_the_batch_shipped_at_close_reach_on_finding(client: gradhealth.Client) -> None:
    calls: list[tuple[str, int | None]] = []
    handle = _diverge_unshipped(client, "at-close", lambda f, w: calls.append((f.rule, f.step)))
    reported = {(f.rule, f.step) for f in handle.report().findings_at_least("error")}
    assert reported and sorted(calls) == sorted(reported)  # each once, all of them, by the end of the with block


def test_at_close_a_raising_on_finding_does_not_replace_the_blocks_own_exception(client: gradhealth.Client) -> None:
    with pytest.warns(WatchWarning, match="on_finding raised at close"):
        with pytest.raises(KeyError, match="the loop's own error"):
            _diverge_unshipped(client, "at-close-raising", lambda f, w: 1 / 0, fail=True)
    with pytest.raises(StopTraining):  # no exception in the block: the callback's own is the user's to see
        _diverge_unshipped(client, "at-close-stop", stop_training)


def test_actions_refuse_bad_arguments() -> None:
    model, opt, _, _ = _setup()
    with pytest.raises(ValueError, match="0 < factor < 1"):
        lower_lr(2.0)
    with pytest.raises(ValueError, match="on_finding_severity is one of"):
        gradhealth.watch(model, opt, client=object(), on_finding=stop_training, on_finding_severity="fatal")
