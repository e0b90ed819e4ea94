"""Find the first op that creates a NaN (else an Inf) from inputs free of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx

from .graph_map import module_scope


def _has_nan(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and bool(torch.isnan(value).any())


def _has_inf(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and bool(torch.isinf(value).any())


class _Found(Exception):
    def __init__(self, node: fx.Node) -> None:
        super().__init__(node.name)
        self.node = node


class _FirstCreator(fx.Interpreter):
    """Interpret op by op; stop at the first op whose output is bad while its inputs were clean.

    Inputs are checked before the op runs, so in-place ops (masked_fill_) are judged fairly.
    """

    def __init__(self, gm: fx.GraphModule, bad: Callable[[Any], bool]) -> None:
        super().__init__(gm)
        self.bad = bad

    def run_node(self, n: fx.Node) -> Any:
        inputs_clean = not any(self.bad(self.env[a]) for a in n.all_input_nodes if a in self.env)
        result = super().run_node(n)
        if n.op in ("call_function", "call_method", "get_attr") and inputs_clean and self.bad(result):
            raise _Found(n)
        return result


def _locate(gm: fx.GraphModule, flat: list[Tensor], bad: Callable[[Any], bool]) -> fx.Node | None:
    try:
        with torch.no_grad():
            _FirstCreator(gm, bad).run(*flat)
    except _Found as found:
        return found.node
    return None


def locate_forward_nonfinite(gm: fx.GraphModule, inputs: tuple[Tensor, ...], targets: Tensor) -> tuple[str, str] | None:
    """(module path, op) of the first NaN-creating op, else the first Inf-creating op.

    NaN first: an intentional -inf (attention masks) is not the fault; the NaN it later causes is.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    flat = [*inputs, targets][: len(placeholders)]
    try:
        node = _locate(gm, flat, _has_nan) or _locate(gm, flat, _has_inf)
    except Exception:  # the graph ran once already; a failure here only loses the origin
        return None
    if node is None:
        return None
    path, _ = module_scope(node)
    if node.op == "get_attr":
        path = str(node.target).rsplit(".", 1)[0]
    return path, str(node.target)
