"""Hessian-vector products over a model's parameters, one slot per storage so tied weights count once.

After torch.export, tied weights (GPT-2's wte and lm_head) are two parameter objects over one storage
and the graph may use only one of them: the slot's gradient is the sum over its copies, and copies the
graph never reaches are left out instead of failing autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

StorageKey = tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype, torch.device]


def storage_key(p: Tensor) -> StorageKey:
    """Parameters with the same key are the same numbers: one variable for the Hessian."""
    return (p.untyped_storage().data_ptr(), int(p.storage_offset()), tuple(p.shape), p.stride(), p.dtype, p.device)


def tied_slots(params: Sequence[Tensor]) -> list[list[int]]:
    """Indices of params grouped by storage, in first-seen order."""
    slots: dict[StorageKey, list[int]] = {}
    for index, p in enumerate(params):
        slots.setdefault(storage_key(p), []).append(index)
    return list(slots.values())


@dataclass
class HessianOperator:
    """v -> H v on flat vectors over the slots that reach the loss; `gradient` is the flat dL/dtheta."""

    params: list[Tensor]
    slots: list[list[int]]
    slot_grads: list[Tensor]
    gradient: Tensor

    @property
    def dim(self) -> int:
        """Number of distinct parameters in the operator."""
        return int(self.gradient.numel())

    def __call__(self, vector: Tensor) -> Tensor:
        """One Hessian-vector product (double backward through the retained graph)."""
        chunks = list(torch.split(vector, [g.numel() for g in self.slot_grads]))
        outputs = [
            (g, c.view_as(g).to(g.dtype)) for g, c in zip(self.slot_grads, chunks, strict=True) if g.requires_grad
        ]
        if not outputs:
            return torch.zeros_like(vector)  # the loss is linear in every parameter: H = 0
        members = [i for slot in self.slots for i in slot]
        hv = torch.autograd.grad(
            [g for g, _ in outputs],
            [self.params[i] for i in members],
            grad_outputs=[c for _, c in outputs],
            retain_graph=True,
            allow_unused=True,
        )
        by_member = dict(zip(members, hv, strict=True))
        pieces = []
        for slot, g in zip(self.slots, self.slot_grads, strict=True):
            parts = [by_member[i] for i in slot if by_member[i] is not None]
            if not parts:
                parts = [torch.zeros_like(g)]
            total = parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)  # untied: no stack-and-sum copy
            pieces.append(total.detach().reshape(-1))
        return torch.cat(pieces).to(vector.dtype)


def hessian_operator(loss: Tensor, params: Sequence[Tensor]) -> HessianOperator | None:
    """Build the HVP operator of a scalar loss; None when no parameter reaches it."""
    params = [p for p in params if p.requires_grad]
    if not params or not loss.requires_grad:
        return None
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    return operator_from_gradients(params, grads)


def operator_from_gradients(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> HessianOperator | None:
    """The HVP operator from first-order gradients taken with create_graph=True (one per param, None if unused)."""
    params = list(params)
    slots: list[list[int]] = []
    slot_grads: list[Tensor] = []
    for slot in tied_slots(params):
        parts = [g for g in (grads[i] for i in slot) if g is not None]
        if not parts:
            continue  # no copy of this parameter reaches the loss: its Hessian rows are zero
        slots.append(slot)
        slot_grads.append(parts[0] if len(parts) == 1 else torch.stack(parts).sum(0))
    if not slots:
        return None
    gradient = torch.cat([g.detach().reshape(-1).float() for g in slot_grads])
    return HessianOperator(params, slots, slot_grads, gradient)
