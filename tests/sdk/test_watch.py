"""watch(): every logged number equals a plain-autograd computation on an identical model."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradhealth.sdk import watching as watch_module
from gradhealth.sdk.watching import WatchWarning, watch
from torch import nn

from .test_watch_support import Net, Reference, assert_matches, batches, recording_client, twin

OptFactory = Callable[[nn.Module], torch.optim.Optimizer]
OPTIMIZERS: dict[str, OptFactory] = {
    "sgd": lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9),
    "adam": lambda m: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2),
}


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    accumulate: int = 1,
    ref: Reference | None = None,
    log: Any = None,
    scheduler: Any = None,
) -> list[float]:
    """A standard loop; returns each step's loss (mean of its micro-batch losses)."""
    losses = []
    for step in range(len(data) // accumulate):
        micro = []
        for x, y in data[step * accumulate : (step + 1) * accumulate]:
            loss = F.mse_loss(model(x), y)
            (loss / accumulate).backward()
            micro.append(loss.item())
            if log is not None:
                log(loss=loss)
        if ref is not None:
            ref.before_step(step)
        opt.step()
        if ref is not None:
            ref.after_step()
        opt.zero_grad()
        if scheduler is not None:
            scheduler.step()
        losses.append(sum(micro) / len(micro))
    return losses


def watched_and_reference(
    name: str, steps: int = 6, accumulate: int = 1, scheduler: bool = False, **options: Any
) -> tuple[dict[int, dict[str, Any]], Reference, list[float], Any]:
    """The same loop twice: watched, and instrumented by hand."""
    model, ref_model = twin(Net)
    opt, ref_opt = OPTIMIZERS[name](model), OPTIMIZERS[name](ref_model)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5) if scheduler else None
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, 2, 0.5) if scheduler else None
    data = batches(steps * accumulate)
    client = recording_client()
    with watch(model, opt, run="t", client=client, **options) as handle:
        losses = train(model, opt, data, accumulate, log=handle.log, scheduler=sched)
    reference = Reference(ref_model, ref_opt)
    ref_losses = train(ref_model, ref_opt, data, accumulate, ref=reference, scheduler=ref_sched)
    assert losses == ref_losses
    return client.runs.steps(), reference, losses, client


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_layer_each_step_equals_autograd(name: str) -> None:
    logged, reference, losses, client = watched_and_reference(name, scheduler=True, param_every=1)
    assert_matches(logged, reference.steps)
    for step, row in logged.items():
        assert not np.isnan(row["update_norm"]).any() and not np.isnan(row["weight_norm"]).any()
        assert row["loss"] == pytest.approx(losses[step], rel=1e-6)
    assert len({row["lr"] for row in logged.values()}) == 3  # the scheduler's lr, step by step (checked above)
    created = client.runs.created[0]
    names = [layer["name"] for layer in created["layers"]]
    assert names == list(reference.layers) == ["(root)", "encoder.0", "encoder.2", "frozen", "head", "unused"]
    sizes = [layer["num_parameters"] for layer in created["layers"]]
    assert sizes == [sum(p.numel() for p in ps) for ps in reference.layers.values()]
    assert created["metrics"] == list(watch_module.METRICS)
    assert created["config"]["optimizer"] == type(reference.optimizer).__name__
    frozen, unused = names.index("frozen"), names.index("unused")
    for row in logged.values():
        assert row["grad_norm"][frozen] == 0 and row["grad_norm"][unused] == 0  # present, not missing
        assert row["update_norm"][frozen] == 0 and row["weight_norm"][frozen] > 0
    assert [b["seq"] for b in client.runs.batches] == list(range(len(client.runs.batches)))


def test_gradient_accumulation_logs_the_accumulated_gradient() -> None:
    logged, reference, losses, _ = watched_and_reference("adam", steps=3, accumulate=4, param_every=1)
    assert sorted(logged) == [0, 1, 2]  # one record per optimizer step, not per micro-batch
    assert_matches(logged, reference.steps)
    assert [logged[s]["loss"] for s in range(3)] == pytest.approx(losses, rel=1e-6)  # micro-batch mean


def test_every_k_records_every_kth_step() -> None:
    logged, reference, losses, _ = watched_and_reference("sgd", steps=10, every=3, param_every=1)
    assert sorted(logged) == [0, 3, 6, 9]
    assert_matches(logged, {s: reference.steps[s] for s in (0, 3, 6, 9)})
    assert [logged[s]["loss"] for s in (0, 3, 6, 9)] == pytest.approx([losses[s] for s in (0, 3, 6, 9)])


def test_pause_records_nothing_and_keeps_the_step_numbers() -> None:
    model, ref_model = twin(Net)
    opt, ref_opt = OPTIMIZERS["sgd"](model), OPTIMIZERS["sgd"](ref_model)
    data = batches(12)
    client = recording_client()
    with watch(model, opt, run="t", client=client, param_every=1, budget=None) as handle:
        logged_at: list[int] = []

        def log(loss: torch.Tensor) -> None:  # train() logs before each optimizer step
            handle.log(loss=loss)
            logged_at.append(handle.steps_taken)
            if handle.steps_taken == 4:
                handle.pause()  # steps 4..7 go unrecorded
                assert handle.paused
            elif handle.steps_taken == 8:
                handle.resume()

        losses = train(model, opt, data, log=log)
        assert logged_at == list(range(12)) and not handle.paused
        assert handle.steps_taken == 12 and handle.steps_recorded == 8
    reference = Reference(ref_model, ref_opt)
    train(ref_model, ref_opt, data, ref=reference)
    logged = client.runs.steps()
    recorded = [0, 1, 2, 3, 8, 9, 10, 11]
    assert sorted(logged) == recorded  # counted while paused: the optimizer's own step numbers after resume()
    assert_matches(logged, {s: reference.steps[s] for s in recorded})
    assert [logged[s]["loss"] for s in recorded] == pytest.approx([losses[s] for s in recorded], rel=1e-6)


def test_param_every_samples_each_layer_in_turn() -> None:
    logged, reference, _, _ = watched_and_reference("sgd", steps=9, param_every=3)
    assert_matches(logged, reference.steps)
    measured = np.array([~np.isnan(logged[s]["update_norm"]) for s in range(9)])
    for metric in ("weight_norm", "grad_max_abs"):  # sampled together
        np.testing.assert_array_equal(measured, np.array([~np.isnan(logged[s][metric]) for s in range(9)]))
    assert not np.isnan([logged[s]["grad_norm"] for s in range(9)]).any()  # every layer, every step
    for layer in range(measured.shape[1]):  # each layer: every third recorded step, at a fixed phase
        steps = np.flatnonzero(measured[:, layer])
        assert len(steps) == 3 and set(np.diff(steps)) == {3}
    assert measured.any(axis=1).all()  # work is spread over the steps


def test_param_every_zero_disables_weight_statistics() -> None:
    logged, reference, _, _ = watched_and_reference("sgd", steps=2, param_every=0)
    assert_matches(logged, reference.steps)
    sampled = ("grad_max_abs", "weight_norm", "update_norm")
    assert all(np.isnan(row[m]).all() for row in logged.values() for m in sampled)


def _loop_with_logging(when: str, steps: int = 4) -> tuple[dict[int, dict[str, Any]], list[float]]:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    client = recording_client()
    data = batches(steps)
    losses = []
    with watch(model, opt, run="t", client=client) as handle:
        for x, y in data:
            loss = F.mse_loss(model(x), y)
            losses.append(loss.item())
            if when == "before":
                handle.log(loss=loss)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if when == "after":
                handle.log(loss=loss)
            elif when == "explicit":
                handle.log(loss=loss.item(), step=len(losses) - 1)
    return client.runs.steps(), losses


@pytest.mark.parametrize("when", ["before", "after", "explicit"])
def test_log_attaches_the_loss_to_its_own_step(when: str) -> None:
    logged, losses = _loop_with_logging(when)
    assert [logged[s]["loss"] for s in range(len(losses))] == pytest.approx(losses, rel=1e-6)


class ReturnsLoss(nn.Module):
    """A model whose forward returns its own loss, as a scalar or inside a dict."""

    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.net = nn.Linear(8, 1)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        loss = F.mse_loss(self.net(x), y)
        return {"loss": loss, "logits": x} if self.as_dict else loss


@pytest.mark.parametrize("as_dict", [False, True])
def test_loss_is_picked_up_from_forward_when_never_logged(as_dict: bool) -> None:
    model = ReturnsLoss(as_dict)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    client = recording_client()
    losses = []
    with watch(model, opt, run="t", client=client):
        for x, y in batches(3):
            out = model(x, y)
            loss = out["loss"] if as_dict else out
            with torch.no_grad():
                model(x, y * 10)  # an evaluation forward is not the step's loss
            losses.append(loss.item())
            loss.backward()
            opt.step()
            opt.zero_grad()
    logged = client.runs.steps()
    assert [logged[s]["loss"] for s in range(3)] == pytest.approx(losses, rel=1e-6)


def test_nonfinite_gradient_is_counted_and_its_norm_is_inf() -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    client = recording_client()
    with watch(model, opt, run="t", client=client, param_every=1) as handle:
        for step, (x, y) in enumerate(batches(2)):
            F.mse_loss(model(x), y).backward()
            if step == 1:
                model.head.weight.grad[0, 0] = float("nan")
                model.head.bias.grad[0] = float("inf")
                model.encoder[0].bias.grad[1] = float("-inf")
            opt.step()
            opt.zero_grad()
    names = [layer.name for layer in handle.layers]
    head, enc = names.index("head"), names.index("encoder.0")
    row = client.runs.steps()[1]
    assert row["nonfinite"][head] == 2 and row["nonfinite"][enc] == 1
    assert row["grad_norm"][head] == math.inf and row["grad_max_abs"][head] == math.inf
    assert row["grad_norm"][enc] == math.inf and row["grad_max_abs"][enc] == math.inf
    assert np.isfinite(np.delete(row["grad_norm"], [head, enc])).all()
    assert not client.runs.steps()[0]["nonfinite"].any()


def test_manual_step_without_an_optimizer() -> None:
    model, ref_model = twin(Net)
    client = recording_client()
    reference = Reference(ref_model)
    data = batches(3)
    with watch(model, run="t", client=client, param_every=1) as handle:
        for x, y in data:
            loss = F.mse_loss(model(x), y)
            loss.backward()
            handle.step()
            handle.log(loss=loss)
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= 0.1 * p.grad
            model.zero_grad()
    for step, (x, y) in enumerate(data):
        F.mse_loss(ref_model(x), y).backward()
        reference.before_step(step)
        with torch.no_grad():
            for p in ref_model.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
        ref_model.zero_grad()
    logged = client.runs.steps()
    assert_matches(logged, reference.steps, metrics=("grad_norm", "grad_max_abs", "nonfinite", "weight_norm"))
    assert all(np.isnan(row["update_norm"]).all() and row["lr"] is None for row in logged.values())
    assert all(row["loss"] is not None for row in logged.values())


def test_tensor_learning_rate_is_read_without_item() -> None:
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.003))
    client = recording_client()
    with watch(model, opt, run="t", client=client):
        train(model, opt, batches(2))
    assert [row["lr"] for row in client.runs.steps().values()] == pytest.approx([0.003, 0.003])


def test_wrapper_prefixes_are_stripped_from_layer_names() -> None:
    model = nn.DataParallel(Net())  # on CPU a pass-through wrapper, named `module.` like DDP
    handle = watch(model, torch.optim.SGD(model.parameters(), lr=0.1), run="t", client=recording_client())
    handle.close()
    assert [layer.name for layer in handle.layers] == ["(root)", "encoder.0", "encoder.2", "frozen", "head", "unused"]


def test_an_internal_error_stops_watching_with_one_warning_and_training_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    client = recording_client()
    handle = watch(model, opt, run="t", client=client)
    monkeypatch.setattr(handle._stats, "grads", lambda *a: 1 / 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = train(model, opt, batches(4), log=handle.log)
        handle.close()
    assert len(losses) == 4
    assert [str(w.message) for w in caught if w.category is WatchWarning] == [
        "gradhealth.watch stopped recording after an internal error "
        "(ZeroDivisionError('division by zero')); training goes on"
    ]
    assert handle.steps_recorded == 0 and not opt._optimizer_step_pre_hooks


def test_ranks_other_than_zero_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "_rank", lambda: (1, 2))
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    client = recording_client()
    with watch(model, opt, run="t", client=client) as handle:
        train(model, opt, batches(3), log=handle.log)
        assert handle.flush()
    assert not handle.active and handle.run_id is None and client.runs.calls == 0
    assert not opt._optimizer_step_pre_hooks and not model._forward_hooks
    with pytest.raises(RuntimeError, match="rank 0 only"):
        handle.report()


def test_report_flushes_and_asks_the_service() -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    client = recording_client()
    with watch(model, opt, run="t", client=client) as handle:
        train(model, opt, batches(3), log=handle.log)
        assert handle.report() == "report of run-1"
        assert sorted(client.runs.steps()) == [0, 1, 2]  # all delivered before the report was read
    assert handle.run_id == "run-1" and handle.dropped == 0 and handle.steps_recorded == 3


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        watch(Net(), every=0, client=recording_client())
    with pytest.raises(ValueError, match="no parameters"):
        watch(nn.ReLU(), client=recording_client())
