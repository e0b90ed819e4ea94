"""Remedies that change how the trial trains: lr, gradient clipping, loss scale, frozen parameters."""

from __future__ import annotations

from .setup import Params, RemedyError, TrialSetup, names, number, optional_number, parameter_names


def set_lr(params: Params, setup: TrialSetup) -> None:
    """Replace the lr (params.lr), or scale it (params.factor)."""
    lr = optional_number(params, "lr", None, positive=True)
    if lr is None:
        factor = optional_number(params, "factor", None, positive=True)
        if factor is None:
            raise RemedyError("params.lr (the new lr) or params.factor (a multiplier) is required")
        lr = setup.lr * factor
    setup.lr = lr


def clip_gradients(params: Params, setup: TrialSetup) -> None:
    """Clip the global gradient norm to max_norm before each step."""
    setup.max_norm = number(params, "max_norm", positive=True)
    norm_type = optional_number(params, "norm_type", 2.0, positive=True)
    assert norm_type is not None
    setup.norm_type = norm_type


def use_loss_scaling(params: Params, setup: TrialSetup) -> None:
    """A static loss scale: gradients are rounded through fp16 at loss_scale times their size."""
    setup.loss_scale = number(params, "loss_scale", low=1.0)


def unfreeze(params: Params, setup: TrialSetup) -> None:
    """Train the named parameters too."""
    setup.trainable.update(parameter_names(setup, names(params, "parameters")))
