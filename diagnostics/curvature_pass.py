"""The curvature check of one analysis: sharpness, Adam's preconditioned sharpness, or why not.

Sharpness is the top algebraic Hessian eigenvalue. Under Adam/AdamW the step is P^-1 m with
P = diag(sqrt(v_hat) + eps), so stability is set by the top eigenvalue of P^-1 H (Cohen et al. 2022,
"Adaptive gradient methods at the edge of stability"), computed on the symmetric P^-1/2 H P^-1/2.
Packages carry no optimizer state, so v_hat is Adam's own first-step estimate: the batch gradient
squared. Weight decay is left out of both operators.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .attention import has_fused_sdpa, math_attention, unfused_copy
from .curvature import LanczosResult, lanczos_top_eigenvalue
from .curvature_stats import (
    LAMBDA_TOL,
    TOP_K,
    CurvatureStats,
    Interval,
    condition_ratio,
    slq_density,
    top_eigenvalue_interval,
    trace_interval,
)
from .errors import is_out_of_memory
from .hvp import HessianOperator, hessian_operator, operator_from_gradients
from .loading import LoadedModel
from .options import AnalysisOptions

CHECK = "curvature"
PRECONDITIONED_CHECK = "curvature.preconditioned"
TRACE_CHECK = "curvature.trace"
LR_CHECK = "lr_too_high"


@dataclass
class CurvatureOutcome:
    """What the curvature pass found, and the checks it could not run with the reason."""

    sharpness: float | None = None
    preconditioned_sharpness: float | None = None
    steps: int = 0  # Hessian-vector products in all
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stats: CurvatureStats = field(default_factory=CurvatureStats)


@dataclass(frozen=True)
class FirstOrder:
    """The analysis pass's loss and its create_graph gradients: the curvature check then needs no pass of its own."""

    loss: Tensor
    params: list[Tensor]
    grads: tuple[Tensor | None, ...]


def reuses_first_order(loaded: LoadedModel) -> bool:
    """Whether the analysis pass can serve: an exported graph with no fused attention to rewrite for double backward."""
    return loaded.graph_module is not None and not has_fused_sdpa(loaded.graph_module)


def first_order_backward(loss: Tensor, params: Mapping[str, Tensor], reuse: bool) -> FirstOrder | None:
    """Fill p.grad; with `reuse` (curvature follows), keep the gradients' graph too: that check's pass saved."""
    if reuse:
        trainable = [p for p in params.values() if p.requires_grad]
        try:
            grads = torch.autograd.grad(loss, trainable, create_graph=True, allow_unused=True)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            # no room for the second-order graph: a plain backward; the curvature pass says it ran out of memory
        else:
            for p, g in zip(trainable, grads, strict=True):
                p.grad = None if g is None else g.detach()
            return FirstOrder(loss, trainable, grads)
    loss.backward()  # type: ignore[no-untyped-call]  # torch: Tensor.backward is unannotated
    return None


def _twice_differentiable(loaded: LoadedModel) -> LoadedModel:
    """The same model, with fused attention nodes rewritten when the graph names them."""
    if loaded.graph_module is None:
        return loaded
    copy = unfused_copy(loaded.graph_module)
    return loaded if copy is None else dataclasses.replace(loaded, module=copy, graph_module=copy)


def explain_failure(exc: BaseException) -> str:
    """A reason a user can act on, from the error double backward raised."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, FloatingPointError):
        return "the Hessian-vector products are NaN/Inf (the loss overflows near these weights): fix non_finite first"
    if is_out_of_memory(exc):
        return (
            "out of memory in the Hessian-vector products (they keep the backward graph for a second "
            "backward, about 2-3x a training step's memory): analyse a smaller batch or use a larger device"
        )
    if "derivative for" in text and "not implemented" in text:
        op = text.split("derivative for", 1)[1].split("is not implemented", 1)[0].strip()
        return (
            f"the model uses {op}, which PyTorch {torch.__version__} cannot differentiate twice, and "
            "Hessian-vector products need a second derivative: replace it with differentiable ops "
            "(e.g. a custom kernel or autograd.Function by its reference implementation) or drop 'curvature'"
        )
    return f"Hessian-vector products failed: {type(exc).__name__}: {text[:300]}"


def adam_scale(gradient: Tensor, eps: float) -> Tensor:
    """P^-1/2 = (|g| + eps)^-1/2: Adam's first-step v_hat is g^2, so P = |g| + eps."""
    return (gradient.abs() + eps).rsqrt()


FAILURES = (RuntimeError, FloatingPointError, NotImplementedError, MemoryError)


def _preconditioned(op: HessianOperator, options: AnalysisOptions, outcome: CurvatureOutcome) -> None:
    """Adam/AdamW's P^-1/2 H P^-1/2; a failure here keeps the plain sharpness and skips only this part."""
    opt = options.optimizer
    if opt is None or opt.name not in ("adam", "adamw"):
        return
    scale = adam_scale(op.gradient, opt.eps)
    try:
        pre = lanczos_top_eigenvalue(
            lambda v: scale * op(scale * v),
            op.dim,
            op.gradient,
            max_steps=options.curvature_iterations,
            rel_tol=LAMBDA_TOL,
            start=scale * op.gradient,  # P^-1/2 g: the gradient in the coordinates y = P^1/2 theta
        )
    except FAILURES as exc:
        outcome.skipped.append((PRECONDITIONED_CHECK, explain_failure(exc)))
        return
    if not math.isfinite(pre.eigenvalue):
        outcome.skipped.append((PRECONDITIONED_CHECK, explain_failure(FloatingPointError())))
        return
    outcome.preconditioned_sharpness = pre.eigenvalue
    outcome.stats.estimates["preconditioned_sharpness"] = top_eigenvalue_interval(pre)
    outcome.steps += pre.steps


def _spectrum(
    op: HessianOperator,
    top: LanczosResult,
    options: AnalysisOptions,
    outcome: CurvatureOutcome,
    ggn: Interval | None,
) -> None:
    """Top-k, trace (the GGN's where equal, else Hutch++ on the Lanczos basis), condition ratio, SLQ density."""
    stats = outcome.stats
    lam = top_eigenvalue_interval(top)
    stats.estimates["hessian_max_eigenvalue"] = lam
    pairs = zip(top.ritz_values, top.ritz_residuals, strict=True)
    # the converged run from the top (the asked-for k, plus any that converged on the way, up to TOP_K);
    # one past an unconverged value may skip an eigenvalue
    converged = [v for v, _ in itertools.takewhile(lambda p: p[1] <= LAMBDA_TOL * abs(p[0]), pairs)]
    stats.top_eigenvalues = converged[: max(options.top_eigenvalues, TOP_K)] or top.top(1)
    if "full" in options.checks:
        stats.density_grid, stats.density = slq_density(top)
    if options.trace_probes == 0:
        outcome.skipped.append((TRACE_CHECK, "left out: trace_probes=0 (set 2 or more for the trace and its interval)"))
        return
    try:
        trace = ggn if ggn is not None else trace_interval(op, op.dim, op.gradient, options.trace_probes, top)
    except FAILURES as exc:
        outcome.skipped.append((TRACE_CHECK, explain_failure(exc)))
        return
    outcome.steps += trace.samples if trace.method.startswith("hutch") else 0  # Hessian-vector products only
    stats.estimates["hessian_trace"] = trace
    ratio = condition_ratio(lam, trace, op.dim)
    if ratio is not None:
        stats.estimates["hessian_condition_ratio"] = ratio


def _sharpness(
    loaded: LoadedModel,
    inputs: tuple[Tensor, ...],
    targets: Tensor,
    options: AnalysisOptions,
    first: FirstOrder | None,
    ggn: Interval | None,
) -> CurvatureOutcome:
    """Both eigenvalues on one retained graph; raises what autograd raises for the plain one."""
    outcome = CurvatureOutcome()
    loss = loaded.per_sample_loss(inputs, targets).float().mean() if first is None else first.loss
    if not bool(torch.isfinite(loss)):
        outcome.skipped.append(
            (CHECK, "the loss is NaN/Inf on this batch, so it has no curvature: fix non_finite first")
        )
        return outcome
    if first is None:
        op = hessian_operator(loss, list(loaded.module.parameters()))
    else:
        op = operator_from_gradients(first.params, first.grads)
    if op is None:
        outcome.skipped.append((CHECK, "no trainable parameter reaches the loss, so there is no Hessian to measure"))
        return outcome
    top = lanczos_top_eigenvalue(
        op,
        op.dim,
        op.gradient,
        max_steps=options.curvature_iterations,
        rel_tol=LAMBDA_TOL,
        start=op.gradient,
        k=options.top_eigenvalues,  # default 1: stop once lambda_max alone is within LAMBDA_TOL
    )
    if not math.isfinite(top.eigenvalue):
        raise FloatingPointError("the top eigenvalue is NaN/Inf")
    outcome.sharpness, outcome.steps = top.eigenvalue, top.steps
    _spectrum(op, top, options, outcome, ggn)
    _preconditioned(op, options, outcome)
    return outcome


def measure_curvature(
    loaded: LoadedModel,
    inputs: tuple[Tensor, ...],
    targets: Tensor,
    options: AnalysisOptions,
    first: FirstOrder | None = None,
    ggn: Interval | None = None,
) -> CurvatureOutcome:
    """Run the curvature check (on `first`'s gradients when given); a failure becomes a skipped entry, never a gap.

    `ggn` is the trace from ggn_trace where it equals the Hessian's (piecewise-linear networks): no probes then.
    """
    try:
        with math_attention():
            model = loaded if first is not None else _twice_differentiable(loaded)
            outcome = _sharpness(model, inputs, targets, options, first, ggn)
    except FAILURES as exc:
        outcome = CurvatureOutcome(skipped=[(CHECK, explain_failure(exc))])
    if options.optimizer is None:
        outcome.skipped.append(
            (
                LR_CHECK,
                "no optimizer was given: name it and its lr (e.g. --optimizer sgd --lr 0.1) to compare "
                "the sharpness with the learning rate's stability limit",
            )
        )
    return outcome
