"""Attention that can be differentiated twice, for the curvature pass.

The fused SDPA kernels (flash, memory-efficient, cuDNN) have no double backward, so a Hessian-vector
product through them fails. `aten.scaled_dot_product_attention` in an exported graph dispatches at run
time and obeys `sdpa_kernel`; a graph that names a fused kernel directly (an archive exported after
decompositions) gets those nodes rewritten to the math implementation in a copy.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, fx
from torch._ops import OpOverload
from torch.fx.operator_schemas import normalize_function
from torch.nn.attention import SDPBackend, sdpa_kernel

_aten = torch.ops.aten
FUSED_SDPA: dict[OpOverload, str | None] = {
    _aten._scaled_dot_product_flash_attention_for_cpu.default: "attn_mask",
    _aten._scaled_dot_product_flash_attention.default: None,
    _aten._scaled_dot_product_efficient_attention.default: "attn_bias",
    _aten._scaled_dot_product_cudnn_attention.default: "attn_bias",
}


@contextmanager
def math_attention() -> Iterator[None]:
    """Run scaled_dot_product_attention with the twice-differentiable math kernel."""
    with sdpa_kernel(SDPBackend.MATH):
        yield


def fused_layout(output: Tensor) -> Tensor:
    """The fused kernels return [B, H, L, D] stored as [B, L, H, D]; later view ops traced below dispatch rely on it."""
    return output.transpose(1, 2).contiguous().transpose(1, 2) if output.dim() == 4 else output


def _only_output_used(node: fx.Node) -> bool:
    """The fused op's extra outputs (logsumexp, rng state) have no math equivalent: only output 0 may be read."""
    return all(
        user.op == "call_function" and user.target is operator.getitem and (user.args[1] == 0 or not user.users)
        for user in node.users
    )


def _math_args(node: fx.Node, target: OpOverload) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The math kernel's arguments for one fused SDPA node."""
    normalized = normalize_function(
        target,
        tuple(node.args),
        dict(node.kwargs),
        normalize_to_only_use_kwargs=True,
    )
    if normalized is None:
        return None
    kw = normalized.kwargs
    mask_name = FUSED_SDPA[target]
    return (kw["query"], kw["key"], kw["value"]), {
        "attn_mask": kw.get(mask_name) if mask_name else None,
        "dropout_p": kw.get("dropout_p", 0.0),
        "is_causal": kw.get("is_causal", False),
        "scale": kw.get("scale"),
    }


def has_fused_sdpa(gm: fx.GraphModule) -> bool:
    """Whether the graph names a fused SDPA kernel (one with no double backward)."""
    return any(node.op == "call_function" and node.target in FUSED_SDPA for node in gm.graph.nodes)


def unfused_copy(gm: fx.GraphModule) -> fx.GraphModule | None:
    """A copy of gm (sharing its parameters) with fused SDPA nodes on the math kernel; None if none to rewrite."""
    if not has_fused_sdpa(gm):
        return None  # the common case: nothing to copy
    graph = copy.deepcopy(gm.graph)
    rewritten = 0
    for node in list(graph.nodes):
        target = node.target
        if not isinstance(target, OpOverload) or target not in FUSED_SDPA or not _only_output_used(node):
            continue
        call = _math_args(node, target)
        if call is None:
            continue
        args, kwargs = call
        with graph.inserting_after(node):
            math = graph.call_function(_aten._scaled_dot_product_attention_math.default, args, kwargs)
        with graph.inserting_after(math):
            output = graph.call_function(operator.getitem, (math, 0))
        with graph.inserting_after(output):
            laid_out = graph.call_function(fused_layout, (output,))
        for user in list(node.users):  # getitem nodes: [0] becomes the math output, unused others go
            user.replace_all_uses_with(laid_out)
            graph.erase_node(user)
        graph.erase_node(node)
        rewritten += 1
    if not rewritten:
        return None
    graph.lint()
    return fx.GraphModule(gm, graph)
