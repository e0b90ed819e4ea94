"""Remedies on the trial's data: per-feature standardisation of inputs or targets."""

from __future__ import annotations

import torch
from torch import Tensor

from .setup import Params, RemedyError, TrialSetup, optional_number, vector


def standardize(tensor: Tensor, mean: list[float], std: list[float], dim: int, what: str) -> Tensor:
    """(x - mean) / std with one constant per entry of dimension dim (a single constant broadcasts)."""
    if not tensor.is_floating_point():
        raise RemedyError(f"{what} holds {tensor.dtype} values: only floating-point data can be standardised")
    if tensor.dim() < 2:
        tensor_view, dim = tensor.unsqueeze(1), 1
    else:
        tensor_view = tensor
    if not -tensor_view.dim() <= dim < tensor_view.dim() or dim in (0, -tensor_view.dim()):
        raise RemedyError(f"params.dim {dim} is not a feature dimension of {what} shape {list(tensor.shape)}")
    size = tensor_view.shape[dim]
    if len(mean) != len(std) or len(mean) not in (1, size):
        raise RemedyError(
            f"params.mean/std have lengths {len(mean)}/{len(std)}; {what} has {size} features along dim {dim}"
        )
    shape = [1] * tensor_view.dim()
    shape[dim] = len(mean)
    m = torch.tensor(mean, dtype=tensor.dtype, device=tensor.device).reshape(shape)
    s = torch.tensor(std, dtype=tensor.dtype, device=tensor.device).reshape(shape)
    return ((tensor_view - m) / s).reshape(tensor.shape)


def _dim(params: Params) -> int:
    dim = optional_number(params, "dim", 1.0)
    assert dim is not None
    if dim != int(dim):
        raise RemedyError(f"params.dim must be an integer, got {dim}")
    return int(dim)


def standardize_inputs(params: Params, setup: TrialSetup) -> None:
    """Standardise one input per feature with the given constants."""
    index = optional_number(params, "input", 0.0, low=0.0)
    assert index is not None
    if index != int(index) or int(index) >= len(setup.inputs):
        raise RemedyError(f"params.input {index} names no input; the model has {len(setup.inputs)}")
    inputs = list(setup.inputs)
    mean, std = vector(params, "mean"), vector(params, "std", positive=True)
    inputs[int(index)] = standardize(inputs[int(index)], mean, std, _dim(params), f"input {int(index)}")
    setup.inputs = tuple(inputs)
    setup.data_changed = True


def standardize_targets(params: Params, setup: TrialSetup) -> None:
    """Standardise the targets per column; the loss is then in other units than the baseline's."""
    mean, std = vector(params, "mean"), vector(params, "std", positive=True)
    setup.targets = standardize(setup.targets, mean, std, _dim(params), "the targets")
    setup.loss_units_changed = setup.data_changed = True
