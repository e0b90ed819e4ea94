"""Ready-made `on_finding` callbacks for gradhealth.watch() and the framework callbacks: rules that act.

Each is called as action(finding, watch) on the training thread after an optimizer step (Watch.on_finding).
In a plain loop `stop_training` raises StopTraining out of optimizer.step(); under the Lightning and
Hugging Face callbacks it sets the framework's stop flag instead (watch.stop_hook), so the fit ends cleanly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradhealth.report import Finding
    from gradhealth.sdk.watching import Watch

Action = Callable[["Finding", "Watch"], None]


class StopTraining(Exception):  # a signal, not an error: named like StopIteration
    """Raised by stop_training out of optimizer.step(): catch it around the loop to end training cleanly."""

    def __init__(self, finding: Finding) -> None:
        where = f" at step {finding.step}" if finding.step is not None else ""
        super().__init__(f"gradhealth: {finding.severity} {finding.rule}{where}: {finding.title}")
        self.finding = finding


def stop_training(finding: Finding, watch: Watch) -> None:
    """Stop the run: the framework's stop flag under a callback, else raise StopTraining."""
    if watch.stop_hook is not None:
        watch.stop_hook(finding)
        return
    raise StopTraining(finding)


def lower_lr(factor: float = 0.5) -> Action:
    """An action that multiplies every param group's lr (and the schedulers' base lrs) by `factor`."""
    if not 0 < factor < 1:
        raise ValueError(f"lower_lr(factor) takes 0 < factor < 1; got {factor!r}")

    def action(finding: Finding, watch: Watch) -> None:
        if watch.optimizer is None:
            raise RuntimeError("lower_lr needs the optimizer: pass it to watch(model, optimizer)")
        for group in watch.optimizer.param_groups:
            lr = group["lr"]
            if hasattr(lr, "mul_"):
                lr.mul_(factor)  # a tensor lr (capturable optimizers) stays the same tensor
            else:
                group["lr"] = lr * factor
            if "initial_lr" in group:
                group["initial_lr"] = group["initial_lr"] * factor
        for scheduler in watch.lr_schedulers:
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]

    return action


def checkpoint_and_continue(path: str | Path) -> Action:
    """An action that saves a checkpoint and lets training go on; `path` may hold {step}, {rule} and {rank}.

    Under torch.distributed it runs on every rank (Watch.on_finding): with DDP rank 0 alone writes (the
    replicas are equal); with FSDP2 every rank writes its own shards' values, to the path with {rank}
    filled in (or ".rank{rank}" appended when the path has no {rank}). A framework's own checkpoint
    (Lightning's trainer.save_checkpoint, called on every rank) is used where there is one.
    """
    template = str(path)

    def action(finding: Finding, watch: Watch) -> None:
        if watch.sharded and "{rank}" not in template:
            target = template.format(step=finding.step, rule=finding.rule) + f".rank{watch.rank}"
        else:
            target = template.format(step=finding.step, rule=finding.rule, rank=watch.rank)
        if watch.checkpoint_hook is not None:
            watch.checkpoint_hook(target)
            return
        if watch.world > 1 and not watch.sharded and watch.rank != 0:
            return
        import torch

        state: dict[str, Any] = {"model": _local(watch.model.state_dict()), "finding": finding.model_dump(mode="json")}
        if watch.optimizer is not None:
            state["optimizer"] = _local(watch.optimizer.state_dict())
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, target)

    return action


def _local(state: Any) -> Any:
    """A state dict with each DTensor (FSDP2) replaced by this rank's shard, so torch.load(weights_only=True) reads it."""
    if isinstance(state, dict):
        return {key: _local(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_local(value) for value in state)
    to_local = getattr(state, "to_local", None)
    return to_local() if type(state).__name__ == "DTensor" and callable(to_local) else state


__all__ = ["Action", "StopTraining", "checkpoint_and_continue", "lower_lr", "stop_training"]
