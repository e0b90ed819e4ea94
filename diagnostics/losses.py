"""Named losses as per-sample loss functions, the one form the engine consumes."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError

LossFn = Callable[[Tensor, Tensor], Tensor]


def per_sample(loss: Tensor) -> Tensor:
    """Reduce an unreduced loss to one value per sample, so every loss is a [B] vector."""
    if loss.dim() == 0:
        raise InputError(
            "the loss returned a scalar; gradhealth needs one loss per sample: "
            "use reduction='none' (e.g. F.cross_entropy(out, y, reduction='none'))"
        )
    if loss.dim() == 1:
        return loss
    return loss.flatten(1).mean(dim=1)


def _cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


def _nll(out: Tensor, y: Tensor) -> Tensor:
    return F.nll_loss(out, y, reduction="none")


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(out, y.to(out.dtype), reduction="none")


def _l1(out: Tensor, y: Tensor) -> Tensor:
    return F.l1_loss(out, y.to(out.dtype), reduction="none")


def _smooth_l1(out: Tensor, y: Tensor) -> Tensor:
    return F.smooth_l1_loss(out, y.to(out.dtype), reduction="none")


def _bce_with_logits(out: Tensor, y: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(out, y.to(out.dtype), reduction="none")


NAMED_LOSSES: dict[str, LossFn] = {
    "cross_entropy": _cross_entropy,
    "nll": _nll,
    "mse": _mse,
    "l1": _l1,
    "smooth_l1": _smooth_l1,
    "bce_with_logits": _bce_with_logits,
}


def resolve_loss(loss: str | LossFn) -> LossFn:
    """Map a loss name or callable to a function (outputs, targets) -> unreduced loss."""
    if callable(loss):
        return loss
    try:
        return NAMED_LOSSES[loss]
    except KeyError:
        known = ", ".join(sorted(NAMED_LOSSES))
        raise InputError(f"unknown loss {loss!r}; use one of: {known}") from None


class PerSampleLoss(torch.nn.Module):
    """Model and loss in one module whose forward returns the per-sample loss vector [B]."""

    def __init__(self, model: torch.nn.Module, loss: str | LossFn) -> None:
        super().__init__()
        self.model = model
        self._loss_fn = resolve_loss(loss)

    def forward(self, *inputs: Tensor, targets: Tensor) -> Tensor:
        return per_sample(self._loss_fn(self.model(*inputs), targets))
