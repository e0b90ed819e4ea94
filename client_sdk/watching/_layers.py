"""Which layers watch() records: every module that owns parameters, named as in the user's own model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

ROOT_NAME = "(root)"  # parameters owned by the model object itself (the service needs a non-empty name)
_DATA_PARALLEL = frozenset({"DistributedDataParallel", "DataParallel"})


@dataclass(frozen=True)
class Layer:
    """One watched module: its path, class name and the parameters it owns directly."""

    name: str
    type: str
    params: tuple[nn.Parameter, ...]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def describe(self) -> dict[str, object]:
        """The layer as POST /v1/runs expects it."""
        return {"name": self.name, "type": self.type, "num_parameters": self.num_parameters}


def unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel and torch.compile wrappers (their paths add nothing)."""
    while True:
        if type(module).__name__ in _DATA_PARALLEL and isinstance(getattr(module, "module", None), nn.Module):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            module = module._orig_mod
        else:
            return module


def _walk(module: nn.Module, prefix: str, seen: set[int]) -> Iterator[tuple[str, nn.Module]]:
    module = unwrap(module)
    if id(module) in seen:
        return
    seen.add(id(module))
    yield prefix, module
    for name, child in module._modules.items():
        if child is not None:
            yield from _walk(child, f"{prefix}.{name}" if prefix else name, seen)


def type_name(module: nn.Module) -> str:
    """The user's class name: FSDP2's fully_shard swaps in a subclass (FSDPLinear) that says nothing new."""
    for cls in type(module).__mro__:
        if not cls.__module__.startswith("torch.distributed.fsdp"):
            return cls.__name__
    return type(module).__name__


def find_layers(model: nn.Module) -> list[Layer]:
    """Modules owning parameters directly (recurse=False), frozen ones included, in module order."""
    layers = []
    for name, module in _walk(model, "", set()):
        params = tuple(module.parameters(recurse=False))
        if params:
            layers.append(Layer(name or ROOT_NAME, type_name(module), params))
    return layers


def sample_groups(layers: list[Layer], groups: int) -> list[list[int]]:
    """Layers split into `groups` sets of about equal size, so each sampled step copies ~1/groups of the weights."""
    if groups <= 0:
        return []
    buckets: list[list[int]] = [[] for _ in range(groups)]
    sizes = [0] * groups
    for index in sorted(range(len(layers)), key=lambda i: -layers[i].num_parameters):
        target = min(range(groups), key=sizes.__getitem__)
        buckets[target].append(index)
        sizes[target] += layers[index].num_parameters
    return [sorted(bucket) for bucket in buckets]


def main_device(layers: list[Layer]) -> torch.device:
    """Where per-step statistics are computed: the device of the first parameter."""
    for layer in layers:
        return layer.params[0].device
    return torch.device("cpu")
