"""Activation statistics during training (opt-in): dead and saturated fractions from forward hooks.

Each activation module (nn.ReLU, nn.GELU, nn.Sigmoid, nn.Tanh, ...) gets a forward hook that, on a
step chosen for it, computes the same statistics as the checkpoint probes (diagnostics/probes.py):
`dead`, the share of a ReLU's units inactive for every sample of the batch, and `saturated`, the
share of outputs whose local derivative is below 1% of its maximum. A module called several times
in a step (micro-batches, a shared nn.ReLU) reports the mean of its calls. Functional calls
(F.relu, torch.sigmoid in forward()) have no module to hook and are not seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from gradhealth.diagnostics.activations import REPORTED_KIND
from gradhealth.diagnostics.probes import _activation_stats
from torch import Tensor, nn

from ._layers import _walk

# Most specific first: ReLU6 is a Hardtanh, and nn.GELU(approximate="tanh") is judged by its own derivative.
KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ReLU6, "relu6"),
    (nn.ReLU, "relu"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Tanh, "tanh"),
    (nn.Hardsigmoid, "hardsigmoid"),
    (nn.Hardtanh, "hardtanh"),
    (nn.GELU, "gelu"),
    (nn.SiLU, "silu"),
    (nn.Mish, "mish"),
    (nn.ELU, "elu"),
    (nn.SELU, "selu"),
    (nn.Softplus, "softplus"),
    (nn.Hardswish, "hardswish"),
)


def kind_of(module: nn.Module) -> str | None:
    """The activation kind of a module (None when it is not one watch() reads)."""
    for cls, kind in KINDS:
        if isinstance(module, cls):
            if kind == "gelu" and getattr(module, "approximate", "none") == "tanh":
                return "gelu_tanh"
            return kind
    return None


class ActivationWatch:
    """Forward hooks on every activation module; take() hands over one step's (2, A) [dead, saturated] fractions."""

    def __init__(self, model: nn.Module, stride: int) -> None:
        self.names: list[str] = []
        self.kinds: list[str] = []
        self.stride = stride
        self.last: int | None = None  # the last step whose statistics were recorded
        self.due: Callable[[], bool] = lambda: False  # the handle sets it: whether this step's forward is read
        self._sums: list[list[Tensor]] = []
        self._hooks: list[Any] = []
        for name, module in _walk(model, "", set()):
            kind = kind_of(module)
            if kind is None:
                continue
            index = len(self.names)
            self.names.append(name or "(root)")
            self.kinds.append(kind)
            self._sums.append([])
            self._hooks.append(module.register_forward_hook(self._hook(index, kind)))

    def describe(self) -> list[dict[str, str]]:
        """The activations as config["activations"] of POST /v1/runs sends them."""
        return [
            {"name": name, "kind": REPORTED_KIND.get(kind, kind)}
            for name, kind in zip(self.names, self.kinds, strict=True)
        ]

    def _hook(self, index: int, kind: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not torch.is_grad_enabled() or not isinstance(output, Tensor) or not output.numel() or not self.due():
                return
            source = args[0] if args and isinstance(args[0], Tensor) else None
            with torch.no_grad():
                stats = _activation_stats(kind, output, source)
                nan = torch.full((), math.nan, device=output.device)
                self._sums[index].append(torch.stack([stats.get("dead", nan), stats.get("saturated", nan)]).float())

        return hook

    def take(self, device: torch.device) -> Tensor | None:
        """This step's fractions, (2, A) with NaN where not measured, and a fresh start; None when nothing ran."""
        if not any(self._sums):
            return None
        nan = torch.full((2,), math.nan, device=device)
        rows = [torch.stack(calls).mean(dim=0).to(device) if calls else nan for calls in self._sums]
        self._sums = [[] for _ in self._sums]
        return torch.stack(rows, dim=1)

    def discard(self) -> None:
        """Forget what a step measured (it was not recorded)."""
        self._sums = [[] for _ in self._sums]

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
