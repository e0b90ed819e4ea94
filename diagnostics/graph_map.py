"""Read an exported graph: which module each op belongs to, and which ops are activations."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx

from .dataflow import (
    LINEAR_OPS,
    consuming_ops,
    input_dependent,
    matmul_fans,
    nearest_owner,
    node_args,
    op_kind,
    walk_back,
)

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
    """A module that owns parameters, in forward (data-flow) order."""

    path: str
    type: str
    params: list[str] = field(default_factory=list)
    first_use: int = 10**9
    output_node: fx.Node | None = None
    kind: str = "other"  # linear | conv | embedding | norm | other, from the ops that consume the weight
    weight: str | None = None
    fan_in: int | None = None
    fan_out: int | None = None
    tied_with: list[str] = field(default_factory=list)  # other modules that share these parameters
    consumers: list[fx.Node] = field(default_factory=list)
    serial_inputs: list[str] = field(default_factory=list)  # linear/conv layers whose output it transforms


def parameter_aliases(gm: fx.GraphModule) -> dict[str, list[str]]:
    """Each parameter's canonical name (its first owner) -> every name it goes by, the canonical first."""
    names: dict[int, list[str]] = {}
    for name, param in gm.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {group[0]: group for group in names.values()}


def _owner(name: str) -> str:
    """The module path that owns a parameter name."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def parameter_layers(gm: fx.GraphModule) -> list[LayerInfo]:
    """Group parameters by owning module (tied ones once) and order the groups by data flow."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    dependent = input_dependent(gm.graph)
    getattrs = {n.target: n for n in gm.graph.nodes if n.op == "get_attr" and isinstance(n.target, str)}
    layers: dict[str, LayerInfo] = {}
    for canonical, names in parameter_aliases(gm).items():
        layer = layers.setdefault(_owner(canonical), LayerInfo(path=_owner(canonical), type=""))
        layer.params.append(canonical)
        layer.tied_with += [o for o in dict.fromkeys(map(_owner, names[1:])) if o not in layer.tied_with]
        closure: set[fx.Node] = set()
        for name in names:
            if name in getattrs:
                found, reach = consuming_ops(getattrs[name], dependent)
                layer.consumers += [n for n in found if n not in layer.consumers]
                closure |= reach
        _note_weight(layer, gm.get_parameter(canonical), canonical, closure)
    for layer in layers.values():
        layer.consumers.sort(key=order.__getitem__)
        _classify(layer, order)
        layer.output_node = _scope_output(gm, layer)
    ordered = sorted(layers.values(), key=lambda item: (item.first_use, item.path))
    _link_serial(ordered, dependent)
    return ordered


def _note_weight(layer: LayerInfo, param: torch.Tensor, name: str, closure: set[fx.Node]) -> None:
    """Remember the layer's main weight (2+ dims) and its fans from the matrix products that use it."""
    if layer.weight is not None or param.dim() < 2:
        return
    layer.weight = name
    shape = tuple(param.shape)
    layer.fan_in, layer.fan_out = param[0].numel(), shape[0] * (param[0][0].numel() if param.dim() > 2 else 1)
    for op in consuming_ops_of(closure):
        if op.target in LINEAR_OPS:
            fans = matmul_fans(op, closure, shape)
            if fans is not None:
                layer.fan_in, layer.fan_out = fans
                return


def consuming_ops_of(closure: set[fx.Node]) -> list[fx.Node]:
    """Users of a parameter's closure that are not in it: the ops that apply the parameter."""
    return [user for node in closure for user in node.users if user not in closure]


def _classify(layer: LayerInfo, order: dict[fx.Node, int]) -> None:
    """Position, type name and kind from the first op that applies the layer's parameters to data."""
    if not layer.consumers:
        return
    first = layer.consumers[0]
    layer.first_use = order[first]
    _, type_name = module_scope(first)
    layer.type = type_name or "Module"
    kinds = [op_kind(op.target) for op in layer.consumers]
    known = [k for k in kinds if k != "other"]
    layer.kind = known[0] if known else ("norm" if "Norm" in layer.type else "other")


def _link_serial(layers: list[LayerInfo], dependent: set[fx.Node]) -> None:
    """For each linear/conv layer, the linear/conv layers whose outputs reach its input serially.

    The walk back stops at any layer's op, at normalisation and softmax (they reset the scale) and at
    residual adds (a branch added to the stream does not compound its scale like a serial stack).
    """
    owners = {op: layer for layer in layers for op in layer.consumers}
    for layer in layers:
        if layer.kind not in ("linear", "conv"):
            continue
        data = [a for op in layer.consumers for a in node_args(op) if a in dependent]
        for op in walk_back(data, set(owners), dependent):
            source = owners[op]
            if source is not layer and source.kind in ("linear", "conv") and source.path not in layer.serial_inputs:
                layer.serial_inputs.append(source.path)


def layer_owners(layers: list[LayerInfo]) -> dict[fx.Node, str]:
    """Node -> layer path for the ops that apply each layer's parameters and its output."""
    owners = {op: layer.path for layer in layers for op in layer.consumers}
    owners.update({layer.output_node: layer.path for layer in layers if layer.output_node is not None})
    return owners


def feeding_layer(node: fx.Node, owners: dict[fx.Node, str], dependent: set[fx.Node]) -> str | None:
    """The parameterised layer nearest upstream of a node: where a fix to its input scale applies."""
    return nearest_owner(node, owners, dependent)


def _in_scope(node: fx.Node, path: str) -> bool:
    """Whether the node was produced inside the module at path (or a submodule of it)."""
    scope, _ = module_scope(node)
    return scope == path or (bool(path) and scope.startswith(path + "."))


def _scope_output(gm: fx.GraphModule, layer: LayerInfo) -> fx.Node | None:
    """The tensor a module hands to the rest of the graph after applying its parameters.

    Among the module's float outputs (nodes with a user outside it), the first that depends on
    the layer's parameters: for an RMSNorm that is the weight multiply, not the input cast
    that the residual stream also reads.
    """
    if not layer.path:
        return None
    candidates: list[fx.Node] = []
    node: fx.Node  # Graph.nodes iterates untyped
    for node in gm.graph.nodes:
        if node.op != "call_function" or not _in_scope(node, layer.path) or not is_float_tensor_node(node):
            continue
        if any(not _in_scope(user, layer.path) for user in node.users):
            candidates.append(node)
    applied = _applied(layer)
    return next((node for node in candidates if node in applied), candidates[0] if candidates else None)


def _applied(layer: LayerInfo) -> set[fx.Node]:
    """The layer's consuming ops and every op inside the module computed from them."""
    seen = set(layer.consumers)
    stack = list(layer.consumers)
    while stack:
        for user in stack.pop().users:
            if user not in seen and _in_scope(user, layer.path):
                seen.add(user)
                stack.append(user)
    return seen
