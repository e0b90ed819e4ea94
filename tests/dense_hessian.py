"""Reference curvature for tests: the loss as a function of one flat parameter vector, for dense Hessians."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

LossOf = Callable[[Callable[..., Tensor]], Tensor]


def flat_loss(model: nn.Module, loss_of: LossOf) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The distinct parameters as one vector and the loss as a function of it, so autograd can build H densely."""
    shapes = {name: p.shape for name, p in model.named_parameters()}
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def f(vector: Tensor) -> Tensor:
        chunks, offset = {}, 0
        for name, shape in shapes.items():
            chunks[name] = vector[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return loss_of(lambda *args: functional_call(model, chunks, args))

    return flat, f
