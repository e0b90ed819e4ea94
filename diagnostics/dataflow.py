"""Data flow of an exported graph: where parameters meet the inputs, and what feeds what.

Ops on parameters alone (a transpose, a cast) are not the layer's computation; the first op
that combines a parameter with data derived from the model's inputs is. Layer order, layer
kind, fan-in/out and serial chains are all read from those consuming ops.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import fx

aten = torch.ops.aten

LINEAR_OPS = {aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default}
LINEAR_OPS |= {aten.bmm.default, aten.baddbmm.default}
CONV_OPS = {aten.convolution.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default}
CONV_OPS |= {aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input}
EMBEDDING_OPS = {aten.embedding.default, aten.embedding_bag.default}
NORM_OPS = {aten.layer_norm.default, aten.native_layer_norm.default, aten.batch_norm.default}
NORM_OPS |= {aten.group_norm.default, aten.native_group_norm.default, aten.instance_norm.default}
NORM_OPS |= {aten._native_batch_norm_legit.default, aten._native_batch_norm_legit_no_training.default}
NORM_OPS |= {aten._native_batch_norm_legit_functional.default, aten.rms_norm.default}
# Ops that rescale their input to a fixed scale: a variance chain cannot run through them.
RESCALING_OPS = NORM_OPS | {aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default}
# Attention's output scale follows the values only: the query/key path goes through a softmax.
ATTENTION_VALUE_ARG: dict[object, int] = {aten.scaled_dot_product_attention.default: 2}
RESIDUAL_OPS = {aten.add.Tensor, aten.add_.Tensor, aten.sub.Tensor}


def node_args(node: fx.Node) -> list[fx.Node]:
    """The graph nodes a node reads, positional and keyword, flattened."""
    found: list[fx.Node] = []

    def note(arg: fx.Node) -> fx.Node:
        found.append(arg)
        return arg

    fx.node.map_arg((node.args, node.kwargs), note)
    return found


def input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """Nodes that carry data: all but parameters, buffers and ops computed from those alone.

    A node made from nothing (arange for position ids) counts as data, like the inputs.
    """
    constant: set[fx.Node] = set()
    for node in graph.nodes:
        args = node_args(node)
        if node.op == "get_attr" or (node.op == "call_function" and args and all(a in constant for a in args)):
            constant.add(node)
    return {node for node in graph.nodes if node not in constant}


def consuming_ops(start: fx.Node, dependent: set[fx.Node]) -> tuple[list[fx.Node], set[fx.Node]]:
    """The input-dependent ops a parameter reaches through parameter-only ops, and those ops."""
    closure: set[fx.Node] = {start}
    consumers: list[fx.Node] = []
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for user in node.users:
            if user in dependent:
                if user not in consumers:
                    consumers.append(user)
            elif user not in closure and user.op == "call_function":
                closure.add(user)
                queue.append(user)
    return consumers, closure


def op_kind(target: object) -> str:
    """The role of a parameter consumed by this op: linear, conv, embedding, norm or other."""
    if target in LINEAR_OPS:
        return "linear"
    if target in CONV_OPS:
        return "conv"
    if target in EMBEDDING_OPS:
        return "embedding"
    if target in NORM_OPS:
        return "norm"
    return "other"


def _shape(node: object) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    try:
        return tuple(int(s) for s in val.shape)
    except (TypeError, ValueError):  # symbolic batch size: only the trailing dims are read
        return tuple(int(s) if isinstance(s, int) else -1 for s in val.shape)


def matmul_fans(op: fx.Node, closure: set[fx.Node], weight_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(fan_in, fan_out) of a weight used in a matrix product: fan_in is the contracted size."""
    if op.target is aten.linear.default:
        return weight_shape[-1], weight_shape[0]
    operands = list(op.args[1:3]) if op.target in (aten.addmm.default, aten.baddbmm.default) else list(op.args[:2])
    if len(operands) != 2:
        return None
    left, right = operands
    if right in closure:
        other = _shape(left)
        contracted = other[-1] if other else None
    elif left in closure:
        other = _shape(right)
        contracted = other[-2] if other and len(other) >= 2 else None
    else:
        return None
    numel = 1
    for size in weight_shape:
        numel *= size
    if not contracted or contracted <= 0 or numel % contracted:
        return None
    return contracted, numel // contracted


def breadth_first(start: Iterable[fx.Node], expand: Callable[[fx.Node], list[fx.Node]]) -> Iterator[fx.Node]:
    """Each node reached from start once, nearest first; expand(node) runs only if the caller reads on."""
    seen: set[fx.Node] = set()
    queue = deque(start)
    while queue:
        node = queue.popleft()
        if node in seen:
            continue
        seen.add(node)
        yield node
        queue.extend(expand(node))


def walk_back(start: Iterable[fx.Node], stop: set[fx.Node], dependent: set[fx.Node]) -> list[fx.Node]:
    """Input-dependent ancestors reached from start without passing a stop node; stops reached are returned."""

    def expand(node: fx.Node) -> list[fx.Node]:
        if node in stop or node.target in RESCALING_OPS:
            return []
        if node.target in RESIDUAL_OPS and _is_residual(node, dependent):
            return []
        value_arg = ATTENTION_VALUE_ARG.get(node.target)
        args = [node.args[value_arg]] if value_arg is not None else node_args(node)
        return [arg for arg in args if isinstance(arg, fx.Node) and arg in dependent]

    return [node for node in breadth_first((n for n in start if n in dependent), expand) if node in stop]


def _is_residual(node: fx.Node, dependent: set[fx.Node]) -> bool:
    """An add of two input-dependent tensors of one shape: a branch joining the stream."""
    operands = [a for a in node.args[:2] if isinstance(a, fx.Node) and a in dependent]
    return len(operands) == 2 and _shape(operands[0]) == _shape(operands[1])


def nearest_owner(start: fx.Node, owners: dict[fx.Node, str], dependent: set[fx.Node]) -> str | None:
    """The closest op upstream of start (breadth first) that belongs to a parameterised layer."""
    upstream = breadth_first([start], lambda node: [arg for arg in node_args(node) if arg in dependent])
    return next((owners[node] for node in upstream if node in owners), None)
