"""One short training trial on the analysis batch: the loss and gradient-norm trajectory."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from gradhealth.report.schema import TrialTrajectory
from torch import Tensor

from .loading import LoadedModel
from .options import OptimizerSpec
from .remedies import TrialSetup

FP16_TINY = 2.0**-24  # below fp16's smallest subnormal a gradient entry flushes to zero


@dataclass
class TrialOutcome:
    """A trial's trajectory, its relative loss decrease and the work it did."""

    trajectory: TrialTrajectory
    steps_run: int = 0
    relative_decrease: float | None = None  # 1 - L_K / L_0; None when a loss was non-finite
    extra: dict[str, float] = field(default_factory=dict)


def make_optimizer(spec: OptimizerSpec, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    """The user's optimizer over the trial's trainable parameters, at the trial's lr: fused where torch has it."""
    try:
        return _optimizer(spec, params, lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without fused kernels: one foreach pass per op
        return _optimizer(spec, params, lr, fused=False)


def _optimizer(spec: OptimizerSpec, params: list[Tensor], lr: float, fused: bool) -> torch.optim.Optimizer:
    """One of the three optimizers; fused: one kernel per step, else foreach."""
    impl = {"fused": True} if fused else {"foreach": True}
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay, **impl)
    kind = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return kind(params, lr=lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay, **impl)


def global_norm(grads: list[Tensor], norm_type: float) -> Tensor:
    """The gradients' global norm in one fused pass (what clip_grad_norm_ computes)."""
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads, norm_type)
    total: Tensor = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), norm_type)
    return total


def _round_through_fp16(grads: list[Tensor], scale: float, count: bool) -> float | None:
    """Replace each (scaled) gradient by its fp16 value, unscaled; with count, the fraction flushed to zero."""
    flushed: Tensor | None = None
    nonzero: Tensor | None = None
    for g in grads:
        half = g.half()
        if count:
            lost, kept = ((g != 0) & (half == 0)).sum(), (g != 0).sum()
            flushed = lost if flushed is None else flushed + lost
            nonzero = kept if nonzero is None else nonzero + kept
        g.copy_(half)  # exact: every fp16 value is a float32 value
    if scale != 1.0 and grads:
        torch._foreach_div_(grads, scale)
    if flushed is None or nonzero is None:
        return None
    return float(flushed) / max(float(nonzero), 1.0)


def _drop_grads(params: list[Tensor]) -> None:
    """zero_grad(set_to_none=True) without the optimizer's per-call profiling and grouping overhead."""
    for p in params:
        p.grad = None


def run_trial(
    loaded: LoadedModel,
    setup: TrialSetup,
    spec: OptimizerSpec,
    steps: int,
    precision: str,
    lean: LoadedModel | None = None,
) -> TrialOutcome:
    """Train `steps` steps from the setup's parameters; stop at the first non-finite loss or gradient.

    The first step runs `loaded` (the exported module checks its inputs), later steps and the final loss
    `lean` (the same tensors without probes or input checks, trial_model.lean_model) when given. Each step
    reads the host once, loss and gradient norm together, before the optimizer may step.
    """
    outcome = TrialOutcome(TrialTrajectory())
    traj = outcome.trajectory
    trained = [setup.params[n] for n in setup.params if n in setup.trainable]
    for name, p in setup.params.items():
        p.requires_grad_(name in setup.trainable)
    optimizer = make_optimizer(spec, trained, setup.lr)
    flushed: float | None = None
    model = loaded
    for step in range(steps):
        _drop_grads(trained)
        loss = model.per_sample_loss(setup.inputs, setup.targets).float().mean()
        model = lean if lean is not None else loaded
        (loss * setup.loss_scale if setup.loss_scale != 1.0 else loss).backward()  # type: ignore[no-untyped-call]  # torch: unannotated
        grads = [p.grad for p in trained if p.grad is not None]
        if precision == "fp16":
            with torch.no_grad():
                counted = _round_through_fp16(grads, setup.loss_scale, count=step in (0, steps - 1))
                flushed = counted if counted is not None else flushed
        elif setup.loss_scale != 1.0 and grads:
            torch._foreach_div_(grads, setup.loss_scale)
        if setup.max_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(trained, setup.max_norm, norm_type=setup.norm_type)
        else:
            norm = global_norm(grads, setup.norm_type)
        value, norm_value = torch.stack([loss.detach(), norm.detach().float().to(loss.device)]).tolist()
        if not math.isfinite(value):  # a non-finite loss: not a step (its backward ran for the single read)
            traj.loss.append(None)
            traj.non_finite_steps += 1
            break
        traj.loss.append(value)
        outcome.steps_run += 1
        if not math.isfinite(norm_value):
            traj.grad_norm.append(None)
            traj.non_finite_steps += 1
            break
        traj.grad_norm.append(norm_value)
        optimizer.step()
    else:
        with torch.no_grad():
            final = float(model.per_sample_loss(setup.inputs, setup.targets).float().mean())
        traj.loss.append(final if math.isfinite(final) else None)
        traj.non_finite_steps += 0 if math.isfinite(final) else 1
    _drop_grads(trained)
    if precision == "fp16":
        traj.evidence["fp16_flushed_fraction"] = flushed
    first, last = traj.loss[0] if traj.loss else None, traj.loss[-1] if traj.loss else None
    if traj.non_finite_steps == 0 and first is not None and last is not None and first > 0:
        outcome.relative_decrease = 1.0 - last / first
    return outcome
