"""`gradhealth.watch()`: stream per-step, per-layer gradient statistics of a training loop to the service."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import torch
from gradhealth.report.schema import SEVERITY_ORDER
from torch import nn

from ._activations import ActivationWatch
from ._extras import Extras
from ._layers import Layer, find_layers, main_device
from ._sketch import SketchSchedule
from ._stats import METRICS
from .handle import Watch, WatchWarning

if TYPE_CHECKING:
    from gradhealth.report import Finding

__all__ = ["METRICS", "Watch", "WatchWarning", "watch"]


def _rank() -> tuple[int, int]:
    """(rank, world_size) under torch.distributed, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _client_factory(client: Any) -> Any:
    """The given client, or a default Client made on first use (in the background thread, not at watch())."""
    lock, made = threading.Lock(), []

    def get() -> Any:
        if client is not None:
            return client
        with lock:
            if not made:
                from ..client import Client

                # the watch thread retries on its own schedule, and never waits long on one request
                made.append(Client(max_retries=0, timeout=httpx.Timeout(30.0, connect=5.0)))
            return made[0]

    return get


def _config(
    optimizer: Any,
    scaler: Any,
    layers: list[Layer],
    every: int,
    param_every: int,
    budget: float | None,
    rank: int,
    world: int,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "every": every,
        "param_every": param_every,
        "budget": budget or None,
        "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        "world_size": world,
        "rank": rank,
        "torch": torch.__version__.split("+")[0],
        "device": str(main_device(layers)),
    }
    if scaler is not None and scaler.is_enabled():
        config["grad_scaler"] = {
            "init_scale": getattr(scaler, "_init_scale", None),
            "growth_factor": scaler.get_growth_factor(),
            "backoff_factor": scaler.get_backoff_factor(),
            "growth_interval": scaler.get_growth_interval(),
        }
    return config


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    run: str | None = None,
    every: int = 1,
    client: Any = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    webhook_url: str | None = None,
    on_finding: Callable[[Finding, Watch], None] | None = None,
    on_finding_severity: str = "error",
    param_every: int = 10,
    budget: float | None = 0.03,
    max_buffered_steps: int = 10_000,
    flush_interval: float = 2.0,
    batch_steps: int = 256,
    distributions: bool | int = True,
    activations: bool | int = False,
) -> Watch:
    """Record gradient statistics of every layer at each optimizer step and stream them to the service.

    The optimizer's step hooks read the gradients the optimizer sees (accumulated over micro-batches,
    unscaled by GradScaler). Each recorded step reads every gradient once, for `grad_norm` and
    `nonfinite`; `grad_max_abs`, `weight_norm` and `update_norm` are measured for one group of layers
    per step in turn (each layer every `param_every` recorded steps). `update_norm` keeps a copy of
    that group's weights from just before optimizer.step() to just after: transient memory of about
    1/param_every of the weights (at least the largest layer). Values are computed on the device and
    copied to the host once per step, asynchronously on CUDA; a background thread sends them.
    Only rank 0 records under torch.distributed (gradients are all-reduced, the same on every rank).

    watch() times its own hooks against the step time and keeps within `budget`: while recording
    costs more than two thirds of that fraction of a step (the last third is kept for costs no hook
    can time: docs/runs.md) and more than 0.5 ms per step, it records one step in
    `handle.stride` (a multiple of `every`, at most 64x) and records more often again when there is
    headroom; the first throttle warns once. Steps keep their optimizer step numbers, so a throttled
    run has gaps (a finding's step is then known to within the stride). See docs/runs.md.

    Args:
        model: the module being trained (DDP and torch.compile wrappers are fine).
        optimizer: its optimizer; statistics are taken in its step hooks. Without one, call
            `handle.step()` after backward() at each step.
        run: the run's name on the service (default: model class and start time).
        every: record every `every`-th optimizer step (at most; see `budget`). A recorded step reads
            all gradients once: about 1-2% of a typical step, but ~12% of a memory-bound one
            (benchmarks/watch_overhead.py).
        client: a gradhealth.Client (default: Client() from $GRADHEALTH_URL / $GRADHEALTH_API_KEY).
        scaler: the torch.amp.GradScaler in use: its skipped steps are counted and its settings sent.
        webhook_url: where the service posts health changes of this run.
        on_finding: called as on_finding(finding, watch) on the training thread, after an optimizer step,
            once per new finding at or above `on_finding_severity` (gradhealth.actions: stop_training,
            lower_lr, checkpoint_and_continue); see Watch.on_finding.
        on_finding_severity: the least severity that calls on_finding ("error").
        param_every: weight_norm and update_norm of each layer every `param_every` recorded steps
            (layers are sampled in turn, about 1/param_every of the weights per step); 0 disables.
        budget: the most of the step time recording may take (0.03: 3%), as measured on the
            training thread's clock (on CUDA: host time; the kernels' device time is not seen).
            None or 0: never throttle, record every `every`-th step whatever it costs.
        max_buffered_steps: records kept while the service is slow or away; the oldest are dropped.
        flush_interval: seconds between batches.
        batch_steps: the most records per batch (a full batch is sent at once).
        distributions: per-layer gradient and weight distributions (9 quantiles, zeros, non-finite,
            count) on some recorded steps: True, at the stride that keeps recording and sketches
            together within `budget` (at least every 10 steps, none before the step time is measured;
            every 10 with budget=None), an int for a fixed stride in optimizer steps, False for none.
            Under FSDP2 merged on rank 0 from each rank's shard summary, within a stated rank error
            (docs/runs.md).
        activations: dead and saturated fractions of every activation module (nn.ReLU, nn.GELU,
            nn.Sigmoid, nn.Tanh, ...) from forward hooks: True for every 10th step, an int for that
            stride in optimizer steps (on recorded steps), False (default) for none. Functional
            activations (F.relu in forward()) are not seen. See docs/runs.md.

    Returns:
        A Watch handle: a context manager whose close() delivers what is left (with a timeout).
    """
    if every < 1 or param_every < 0 or max_buffered_steps < 1 or batch_steps < 1 or flush_interval <= 0:
        raise ValueError("every, max_buffered_steps, batch_steps must be >= 1; param_every >= 0; flush_interval > 0")
    for option, value in (("distributions", distributions), ("activations", activations)):
        if not isinstance(value, bool) and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{option} is True, False or a stride in optimizer steps >= 1; got {value!r}")
    if budget is not None and not 0 <= budget < math.inf:
        raise ValueError(f"budget is a fraction of the step time (0.03 for 3%), or None; got {budget!r}")
    if on_finding_severity not in SEVERITY_ORDER:
        raise ValueError(f"on_finding_severity is one of {list(SEVERITY_ORDER)}; got {on_finding_severity!r}")
    rank, world = _rank()
    layers = find_layers(model)
    if not layers:
        raise ValueError("the model has no parameters to watch")
    name = run or f"{type(model).__name__}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = _config(optimizer, scaler, layers, every, param_every, budget, rank, world)
    acts = None
    if activations is not False and rank == 0:
        acts = ActivationWatch(model, 10 if activations is True else int(activations))
        config["activations"] = acts.describe()
    extras = Extras(layers, SketchSchedule(distributions, budget), acts)

    def create_run(service: Any) -> str:
        described = [layer.describe() for layer in layers]
        return service.runs.create(name, described, list(METRICS), config, webhook_url).id

    handle = Watch(
        model=model,
        optimizer=optimizer,
        layers=layers,
        every=every,
        param_every=param_every,
        budget=budget,
        scaler=scaler,
        max_buffered_steps=max_buffered_steps,
        flush_interval=flush_interval,
        batch_steps=batch_steps,
        rank=rank,
        client=_client_factory(client) if rank == 0 else None,
        create_run=create_run,
        world=world,
        extras=extras,
    )
    if on_finding is not None:
        handle.on_finding(on_finding, on_finding_severity)
    return handle
