"""Find the first op whose output is NaN/Inf while its inputs are finite."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, fx

from .graph_map import module_scope


def _nonfinite(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())


class _Found(Exception):
    def __init__(self, node: fx.Node) -> None:
        super().__init__(node.name)
        self.node = node


class _FirstNonFinite(fx.Interpreter):
    """Interpret the graph op by op and stop at the first op that creates a NaN/Inf."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.op in ("call_function", "call_method", "get_attr") and _nonfinite(result):
            args = [self.env[a] for a in n.all_input_nodes if a in self.env]
            if not any(_nonfinite(a) for a in args):
                raise _Found(n)
        return result


def locate_forward_nonfinite(
    gm: fx.GraphModule, inputs: tuple[Tensor, ...], targets: Tensor
) -> tuple[str, str] | None:
    """Return (module path, op) of the op that first produced a non-finite value, if any."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    flat = [*inputs, targets][: len(placeholders)]
    try:
        with torch.no_grad():
            _FirstNonFinite(gm).run(*flat)
    except _Found as found:
        path, _ = module_scope(found.node)
        if found.node.op == "get_attr":
            path = str(found.node.target).rsplit(".", 1)[0]
        return path, str(found.node.target)
    except Exception:  # the graph ran once already; a failure here only loses the origin
        return None
    return None
