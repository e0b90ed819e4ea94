"""Short real training runs with an independent plain-PyTorch statistics collector, for the run-rule tests."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from gradhealth.diagnostics.run_rules import LogChunk
from torch import Tensor, nn

Hook = Callable[[int, nn.Module, torch.optim.Optimizer], None]
Data = Callable[[int], tuple[Tensor, Tensor]]


@dataclass
class Stream:
    """A whole run's log, from which tests cut chunks of any size."""

    layers: list[str]
    steps: np.ndarray
    loss: np.ndarray
    loss_logged: np.ndarray
    lr: np.ndarray
    metrics: dict[str, np.ndarray] = field(default_factory=dict)

    def chunk(self, lo: int, hi: int) -> LogChunk:
        """Rows lo..hi-1 as a LogChunk."""
        return LogChunk(
            steps=self.steps[lo:hi].copy(),
            loss=self.loss[lo:hi].copy(),
            loss_logged=self.loss_logged[lo:hi].copy(),
            lr=self.lr[lo:hi].copy(),
            metrics={k: v[lo:hi].copy() for k, v in self.metrics.items()},
        )

    def chunks(self, sizes: int | list[int]) -> Iterator[LogChunk]:
        """Consecutive chunks; a list of sizes is cycled."""
        cycle = [sizes] if isinstance(sizes, int) else sizes
        lo, k = 0, 0
        while lo < len(self.steps):
            hi = min(lo + cycle[k % len(cycle)], len(self.steps))
            yield self.chunk(lo, hi)
            lo, k = hi, k + 1


def param_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters directly, in registration order (what watch() records)."""
    return [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def _norm(tensors: list[Tensor]) -> float:
    if not tensors:
        return 0.0
    value = math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))
    return value if math.isfinite(value) else math.inf


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Data,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    *,
    sample_every: int = 10,
    before_step: Hook | None = None,
    after_backward: Hook | None = None,
) -> Stream:
    """Train for `steps` optimizer steps and record per-layer statistics straight from p.grad and p."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only contend (15x slower on a busy 2-core box)
    try:
        return _train(model, optimizer, data, loss_fn, steps, sample_every, before_step, after_backward)
    finally:
        torch.set_num_threads(threads)


def _train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Data,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    sample_every: int,
    before_step: Hook | None,
    after_backward: Hook | None,
) -> Stream:
    layers = param_layers(model)
    L = len(layers)
    rec = {name: np.full((steps, L), np.nan) for name in ("grad_norm", "grad_max_abs", "nonfinite")}
    rec |= {name: np.full((steps, L), np.nan) for name in ("weight_norm", "update_norm")}
    losses, lrs = np.full(steps, np.nan), np.full(steps, np.nan)
    for step in range(steps):
        if before_step:
            before_step(step, model, optimizer)
        optimizer.zero_grad(set_to_none=True)
        x, y = data(step)
        loss = loss_fn(model(x), y)
        loss.backward()
        if after_backward:
            after_backward(step, model, optimizer)
        sampled = step % sample_every == 0
        before: list[list[Tensor]] = []
        for j, (_, module) in enumerate(layers):
            params = list(module.parameters(recurse=False))
            grads = [p.grad for p in params if p.grad is not None]
            rec["grad_norm"][step, j] = _norm(grads)
            rec["grad_max_abs"][step, j] = max((float(g.abs().max()) for g in grads), default=0.0)
            rec["nonfinite"][step, j] = sum(int(not bool(torch.isfinite(g).all())) for g in grads)
            if math.isnan(rec["grad_max_abs"][step, j]):
                rec["grad_max_abs"][step, j] = math.inf
            if sampled:
                rec["weight_norm"][step, j] = _norm(params)
                before.append([p.detach().clone() for p in params])
        optimizer.step()
        if sampled:
            for j, (_, module) in enumerate(layers):
                params = list(module.parameters(recurse=False))
                rec["update_norm"][step, j] = _norm([p.detach() - b for p, b in zip(params, before[j], strict=True)])
        losses[step] = float(loss.detach())
        lrs[step] = float(optimizer.param_groups[0]["lr"])
    return Stream(
        layers=[n for n, _ in layers],
        steps=np.arange(steps, dtype=np.int64),
        loss=losses,
        loss_logged=np.ones(steps, dtype=bool),
        lr=lrs,
        metrics=rec,
    )


# --- models and data ---------------------------------------------------------------------------


def mlp(widths: list[int], act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers with an activation between them."""
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        mods.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            mods.append(act())
    return nn.Sequential(*mods)


class SmallCNN(nn.Module):
    """Two convolutions and a classifier on 1x8x8 images."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class SmallGRU(nn.Module):
    """A GRU over a short sequence, classified from its last state."""

    def __init__(self, features: int = 4, hidden: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.rnn = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def teacher_data(shape: tuple[int, ...], classes: int, batch: int = 32, seed: int = 0, noise: float = 0.0) -> Data:
    """Labels from a fixed random linear teacher on flattened inputs (classes=0: regression targets)."""
    gen = torch.Generator().manual_seed(seed)
    size = int(np.prod(shape))
    w = torch.randn(size, max(classes, 1), generator=gen) / math.sqrt(size)

    def data(step: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed * 100_003 + step)
        x = torch.randn(batch, *shape, generator=g)
        logits = x.flatten(1) @ w
        if classes == 0:
            return x, torch.sin(2 * logits) + noise * torch.randn(logits.shape, generator=g)
        return x, logits.argmax(1)

    return data


# --- the runs the tests use (seeds fixed; a few hundred steps each) ------------------------------


def _set_lr(schedule: Callable[[int], float | None]) -> Hook:
    def hook(step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        lr = schedule(step)
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr

    return hook


def _classifier(seed: int = 1) -> tuple[nn.Module, Data]:
    torch.manual_seed(seed)
    return mlp([10, 32, 32, 5]), teacher_data((10,), 5, seed=2)


def _regressor(seed: int = 0) -> tuple[nn.Module, Data]:
    torch.manual_seed(seed)
    return mlp([8, 32, 32, 1]), teacher_data((8,), 0, seed=1, noise=0.1)


def healthy_mlp_sgd() -> Stream:
    """Regression MLP, SGD with momentum."""
    model, data = _regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return train(model, opt, data, nn.functional.mse_loss, 300)


def healthy_mlp_adam() -> Stream:
    """Classifier MLP, Adam."""
    model, data = _classifier()
    return train(model, torch.optim.Adam(model.parameters(), lr=1e-3), data, nn.functional.cross_entropy, 300)


def healthy_cnn_sgd() -> Stream:
    """Small CNN, SGD with momentum."""
    torch.manual_seed(2)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return train(model, opt, teacher_data((1, 8, 8), 4, seed=3), nn.functional.cross_entropy, 300)


def healthy_gru_adam() -> Stream:
    """GRU sequence classifier, Adam."""
    torch.manual_seed(3)
    model = SmallGRU()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return train(model, opt, teacher_data((6, 4), 3, seed=4), nn.functional.cross_entropy, 300)


def healthy_tanh_sgd() -> Stream:
    """Deeper tanh MLP, plain SGD."""
    torch.manual_seed(5)
    model = mlp([10, 32, 32, 32, 5], act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return train(model, opt, teacher_data((10,), 5, seed=6), nn.functional.cross_entropy, 300)


DIVERGE_AT = 150


def diverge_sgd() -> Stream:
    """SGD whose lr jumps from 0.05 to 3 at step 150: the loss explodes to inf/NaN within a few steps."""
    model, data = _regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hook = _set_lr(lambda s: 3.0 if s == DIVERGE_AT else None)
    return train(model, opt, data, nn.functional.mse_loss, 300, before_step=hook)


def diverge_adam() -> Stream:
    """Adam whose lr jumps from 1e-3 to 0.3 at step 150: the loss climbs back to chance and stays (no NaN)."""
    model, data = _classifier()
    hook = _set_lr(lambda s: 0.3 if s == DIVERGE_AT else None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, data, nn.functional.cross_entropy, 300, before_step=hook)


NAN_STEP, NAN_LAYER = 120, "2"


def nan_gradient() -> Stream:
    """One NaN written into layer '2''s weight gradient at step 120; Adam spreads it to everything."""
    model, data = _classifier()

    def poison(step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step == NAN_STEP:
            dict(model.named_modules())[NAN_LAYER].weight.grad[0, 0] = float("nan")

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, data, nn.functional.cross_entropy, 300, after_backward=poison)


FREEZE_AT, FREEZE_LAYER = 150, "0"


def freeze_mid_run() -> Stream:
    """Layer '0' gets requires_grad_(False) at step 150 (a forgotten fine-tuning freeze)."""
    model, data = _classifier()

    def freeze(step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step == FREEZE_AT:
            dict(model.named_modules())[FREEZE_LAYER].requires_grad_(False)

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return train(model, opt, data, nn.functional.cross_entropy, 300, before_step=freeze)


def warmup_spike() -> Stream:
    """lr 10x too high for two steps (100, 101), as an aggressive warm-up: the loss spikes 100x and recovers."""
    model, data = _regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hook = _set_lr(lambda s: 0.5 if 100 <= s < 102 else 0.05)
    return train(model, opt, data, nn.functional.mse_loss, 300, before_step=hook)


def vanishing_trend() -> Stream:
    """Deep tanh MLP with strong weight decay on its middle layers: the gradient reaching layer 0 dies out over time."""
    torch.manual_seed(4)
    model = mlp([8] + [32] * 7 + [1], act=nn.Tanh)
    outer = {"0", "14"}
    groups = [
        {"params": [p for n, p in model.named_parameters() if n.split(".")[0] not in outer], "weight_decay": 0.05},
        {"params": [p for n, p in model.named_parameters() if n.split(".")[0] in outer], "weight_decay": 0.0},
    ]
    opt = torch.optim.SGD(groups, lr=0.1)
    return train(model, opt, teacher_data((8,), 0, seed=5, noise=0.1), nn.functional.mse_loss, 400)


def updates_too_fast() -> Stream:
    """BatchNorm MLP under SGD lr=1, weight_decay=0.05: scale-invariant weights turn over ~20-40% per step."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(10, 32, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 32, bias=False),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 5),
    )
    opt = torch.optim.SGD(model.parameters(), lr=1.0, weight_decay=0.05)
    return train(model, opt, teacher_data((10,), 5, seed=2), nn.functional.cross_entropy, 300)


def updates_too_slow() -> Stream:
    """SGD at lr=1e-5: the weights move ~1e-7 of their norm per step."""
    model, data = _classifier()
    return train(model, torch.optim.SGD(model.parameters(), lr=1e-5), data, nn.functional.cross_entropy, 300)


def oscillation() -> Stream:
    """A two-layer scalar linear net y = a*b*x fit by full-batch GD at lr=0.55, above 2/lambda = 0.5 of its flattest
    minimum: from a small init the loss falls from 0.98 straight into a period-2 cycle between 0.06 and 0.11 (the
    minimal edge-of-stability example)."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[1].weight.fill_(0.1)
    x = torch.ones(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.55)
    return train(model, opt, lambda step: (x, x), nn.functional.mse_loss, 300)


def plateau() -> Stream:
    """Labels drawn independently of the inputs: nothing to learn, the loss sits at ln(5) from the start."""
    model, base = _classifier()

    def data(step: int) -> tuple[Tensor, Tensor]:
        x, _ = base(step)
        return x, torch.randint(0, 5, (x.shape[0],), generator=torch.Generator().manual_seed(999 + step))

    return train(model, torch.optim.SGD(model.parameters(), lr=0.01), data, nn.functional.cross_entropy, 500)


def single_layer_nan() -> Stream:
    """L=1: one Linear layer; its gradient is poisoned at step 60."""
    torch.manual_seed(0)
    model = nn.Linear(8, 1)

    def poison(step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step == 60:
            model.bias.grad.fill_(float("inf"))

    data = teacher_data((8,), 0, seed=1, noise=0.1)
    return train(
        model, torch.optim.SGD(model.parameters(), lr=0.05), data, nn.functional.mse_loss, 100, after_backward=poison
    )


class SkipNonFiniteSGD(torch.optim.SGD):
    """SGD that skips a step whose gradients are not finite, as torch.amp.GradScaler does on overflow."""

    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if all(bool(torch.isfinite(g).all()) for g in grads):
            return super().step(closure)
        return None


OVERFLOW_STEPS, OVERFLOW_LAYER = (50, 51, 120), "4"


def amp_like_overflow() -> Stream:
    """Gradient overflows at steps 50, 51 and 120 in layer '4', each step skipped as GradScaler would."""
    model, data = _classifier()

    def overflow(step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step in OVERFLOW_STEPS:
            dict(model.named_modules())[OVERFLOW_LAYER].weight.grad[0, 0] = float("inf")

    opt = SkipNonFiniteSGD(model.parameters(), lr=0.05, momentum=0.9)
    return train(model, opt, data, nn.functional.cross_entropy, 200, after_backward=overflow)


BAD_BATCH_STEP = 80


def bad_batch() -> Stream:
    """One batch with a NaN input at step 80: loss and every gradient are NaN; the step is skipped and training goes on."""
    model, base = _regressor()

    def data(step: int) -> tuple[Tensor, Tensor]:
        x, y = base(step)
        if step == BAD_BATCH_STEP:
            x[3, 1] = float("nan")
        return x, y

    opt = SkipNonFiniteSGD(model.parameters(), lr=0.05, momentum=0.9)
    return train(model, opt, data, nn.functional.mse_loss, 200)


HEALTHY = {
    f.__name__: f for f in (healthy_mlp_sgd, healthy_mlp_adam, healthy_cnn_sgd, healthy_gru_adam, healthy_tanh_sgd)
}
PATHOLOGICAL = {
    f.__name__: f
    for f in (
        diverge_sgd,
        diverge_adam,
        nan_gradient,
        freeze_mid_run,
        warmup_spike,
        vanishing_trend,
        updates_too_fast,
        updates_too_slow,
        oscillation,
        plateau,
        single_layer_nan,
        amp_like_overflow,
        bad_batch,
    )
}


# --- synthesised early-training trajectories (a falling trend, minibatch noise, an optional spike) ----

SPIKE_AT, SPIKE_LAYERS = 45, ("2", "3")
SPIKE_LOSS = (25.0, 8.0, 3.0, 1.6, 1.2)  # the loss over the spike's steps, as multiples of its trend
SPIKE_GRAD = (16.0, 5.0, 2.0, 1.2)  # the spiking layers' gradient norms, as multiples of theirs


def falling_run(seed: int, noise: float, spike: bool = False, n: int = 300, L: int = 4) -> Stream:
    """Loss and gradient norms falling ~10x over the first ~100 steps with heavy-tailed log-noise `noise`.

    With `spike`, a warm-up spike at SPIKE_AT: the loss ~25x its trend and layers SPIKE_LAYERS' gradients ~16x
    (the global norm ~12x), back to the trend within 5 steps.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    trend = np.exp(-t / 40.0)
    loss = (0.05 + 2.0 * trend) * np.exp(noise * rng.standard_t(8, n))
    grad = (0.3 + 3.0 * trend)[:, None] * np.exp(0.5 * noise * rng.standard_t(8, (n, L)))
    if spike:
        loss[SPIKE_AT : SPIKE_AT + len(SPIKE_LOSS)] = (
            0.05 + 2.0 * trend[SPIKE_AT : SPIKE_AT + len(SPIKE_LOSS)]
        ) * np.array(SPIKE_LOSS)
        cols = [int(c) for c in SPIKE_LAYERS]
        grad[SPIKE_AT : SPIKE_AT + len(SPIKE_GRAD), cols] *= np.array(SPIKE_GRAD)[:, None]
        grad[SPIKE_AT, [c for c in range(L) if c not in cols]] *= 1.5
    metrics = {"grad_norm": grad, "grad_max_abs": grad / 5, "nonfinite": np.zeros((n, L))}
    return Stream(
        [str(i) for i in range(L)], t.astype(np.int64), loss, np.ones(n, dtype=bool), np.full(n, 0.1), metrics
    )


def transient_spike() -> Stream:
    """A warm-up spike on a falling early-training trend that recovers within a few steps."""
    return falling_run(seed=0, noise=0.15, spike=True)


PATHOLOGICAL[transient_spike.__name__] = transient_spike
