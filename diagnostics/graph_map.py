"""Read an exported graph: which module each op belongs to, and which ops are activations."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx

aten = torch.ops.aten

# Activation ops found in the graph, functional calls included; value = reported kind.
ACTIVATION_OPS: dict[object, str] = {
    aten.relu.default: "relu",
    aten.relu_.default: "relu",
    aten.relu6.default: "relu6",
    aten.sigmoid.default: "sigmoid",
    aten.sigmoid_.default: "sigmoid",
    aten.tanh.default: "tanh",
    aten.tanh_.default: "tanh",
    aten.hardtanh.default: "hardtanh",
    aten.hardtanh_.default: "hardtanh",
    aten.hardsigmoid.default: "hardsigmoid",
    aten.gelu.default: "gelu",
    aten.silu.default: "silu",
    aten.silu_.default: "silu",
    aten.leaky_relu.default: "leaky_relu",
    aten.leaky_relu_.default: "leaky_relu",
    aten.elu.default: "elu",
    aten.elu_.default: "elu",
    aten.selu.default: "selu",
    aten.softplus.default: "softplus",
    aten.mish.default: "mish",
    aten.hardswish.default: "hardswish",
}

# Recurrent ops keep their time loop inside one op; their input gradient shows decay through time.
RECURRENT_OPS: dict[object, int] = {
    # op -> index of the batch_first argument
    aten.rnn_tanh.input: 8,
    aten.rnn_relu.input: 8,
    aten.lstm.input: 8,
    aten.gru.input: 8,
}


def module_scope(node: fx.Node) -> tuple[str, str]:
    """Innermost (module path, module type name) that produced a node; ('', '') at top level."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, type_name = list(stack.values())[-1]
    type_str = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "")
    return _clean_path(path), type_str.rsplit(".", 1)[-1]


def _clean_path(path: str) -> str:
    """Normalise export's module path spellings (older releases prefix L['self'])."""
    for prefix in ("L['self'].", "L__self__."):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return "" if path in ("L['self']", "L__self__") else path


def is_float_tensor_node(node: fx.Node) -> bool:
    """True when the node's traced value is a floating-point tensor."""
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and torch.is_floating_point(val)


@dataclass
class LayerInfo:
    """A module that owns parameters, in forward (depth) order."""

    path: str
    type: str
    params: list[str] = field(default_factory=list)
    first_use: int = 10**9
    output_node: fx.Node | None = None


def parameter_layers(gm: fx.GraphModule) -> list[LayerInfo]:
    """Group parameters by owning module and order the groups by first use in the forward."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    layers: dict[str, LayerInfo] = {}
    for name, _ in gm.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        layers.setdefault(owner, LayerInfo(path=owner, type="")).params.append(name)
    for node in gm.graph.nodes:
        if node.op != "get_attr" or not isinstance(node.target, str):
            continue
        owner = node.target.rsplit(".", 1)[0] if "." in node.target else ""
        layer = layers.get(owner)
        if layer is None or node.target not in layer.params:
            continue
        for user in node.users:
            if order[user] < layer.first_use:
                layer.first_use = order[user]
                path, type_name = module_scope(user)
                if path == owner or not layer.type:
                    layer.type = type_name or "Module"
    for layer in layers.values():
        layer.output_node = _scope_output(gm, layer.path)
    return sorted(layers.values(), key=lambda item: (item.first_use, item.path))


def _in_scope(node: fx.Node, path: str) -> bool:
    scope, _ = module_scope(node)
    return scope == path or (bool(path) and scope.startswith(path + "."))


def _scope_output(gm: fx.GraphModule, path: str) -> fx.Node | None:
    """The first float tensor a module's ops hand to the rest of the graph: its output."""
    if not path:
        return None
    node: fx.Node  # Graph.nodes iterates untyped
    for node in gm.graph.nodes:
        if node.op != "call_function" or not _in_scope(node, path):
            continue
        if not is_float_tensor_node(node):
            continue
        if any(not _in_scope(user, path) for user in node.users):
            return node
    return None
