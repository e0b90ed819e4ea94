"""Regression targets against the model's outputs: the scale a regression loss (and its gradient) inherits.

The loss kind is read from the exported graph (``aten.mse_loss`` and kin, so custom losses built on
them count too) or from the named loss of a plain model; the output's scale is the forward RMS the
probes already measured at the layer that feeds the loss, so this costs no extra pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, fx

from .graph_map import LayerInfo
from .losses import NAMED_LOSSES, LossFn
from .measurements import LayerMeasure, TargetMeasure

aten = torch.ops.aten

# Regression losses whose value and gradient scale with (outputs - targets).
REGRESSION_OPS: dict[object, str] = {
    aten.mse_loss.default: "mse",
    aten.l1_loss.default: "l1",
    aten.smooth_l1_loss.default: "smooth_l1",
    aten.huber_loss.default: "huber",
}
REGRESSION_NAMES = frozenset({"mse", "l1", "smooth_l1", "huber"})
# Ops that hand a tensor on unchanged in scale: walk back through them from the loss to the layer.
_PASS_THROUGH = {
    aten.view.default,
    aten.reshape.default,
    aten.squeeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.unsqueeze.default,
    aten.flatten.using_ints,
    aten.to.dtype,
    aten._to_copy.default,
    aten.contiguous.default,
    aten.clone.default,
    aten.expand.default,
    aten.alias.default,
}


def _source(node: object) -> fx.Node | None:
    """Follow a loss argument back through reshapes, casts and broadcasts to the op that made it."""
    for _ in range(16):
        if not isinstance(node, fx.Node) or node.op != "call_function":
            return node if isinstance(node, fx.Node) else None
        if node.target is aten.broadcast_tensors.default:
            return None  # reached from its getitem below
        if getattr(node.target, "__name__", "") == "getitem" and isinstance(node.args[0], fx.Node):
            parent = node.args[0]
            if parent.target is aten.broadcast_tensors.default:
                node = parent.args[0][node.args[1]]  # type: ignore[index]  # args are untyped
                continue
            return node
        if node.target in _PASS_THROUGH:
            node = node.args[0]
            continue
        return node
    return None


def _loss_and_prediction(gm: fx.GraphModule | None, loss_fn: LossFn | None) -> tuple[str, fx.Node | None] | None:
    """The regression loss kind, and the graph node holding the prediction it compares."""
    if gm is None:
        return None
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in REGRESSION_OPS:
            return REGRESSION_OPS[node.target], _source(node.args[0])
    named = next((name for name, fn in NAMED_LOSSES.items() if fn is loss_fn), None)
    if named in REGRESSION_NAMES:
        output = next(node for node in gm.graph.nodes if node.op == "output")
        first = output.args[0]
        first = first[0] if isinstance(first, (tuple, list)) else first
        return str(named), _source(first)
    return None


def _output_rms(prediction: fx.Node | None, infos: Sequence[LayerInfo], layers: Sequence[LayerMeasure]) -> float | None:
    """The forward RMS measured at the layer whose output is the prediction."""
    if prediction is None:
        return None
    for info, layer in zip(infos, layers, strict=False):
        if info.output_node is prediction:
            return layer.output_rms
    return None


# Per-column target statistics are kept for up to this many columns.
MAX_COLUMNS = 1024


def measure_targets(
    targets: Tensor,
    gm: fx.GraphModule | None,
    loss_fn: LossFn | None,
    infos: Sequence[LayerInfo],
    layers: Sequence[LayerMeasure],
) -> TargetMeasure | None:
    """Target mean/std and prediction RMS for regression losses; None for classification and custom losses."""
    if not targets.is_floating_point() or targets.numel() < 2:
        return None
    found = _loss_and_prediction(gm, loss_fn)
    if found is None:
        return None
    kind, prediction = found
    data = targets.detach().float()
    mean, std = torch.stack([data.mean(), data.std()]).tolist()
    measure = TargetMeasure(kind, mean, std, _output_rms(prediction, infos, layers))
    columns = data.reshape(data.shape[0], -1) if data.dim() > 1 else data.reshape(-1, 1)
    if columns.shape[1] <= MAX_COLUMNS and columns.shape[0] >= 2:  # standardize_targets' per-column vectors
        stats = torch.stack([columns.mean(0), columns.std(0)]).tolist()
        measure.column_means, measure.column_stds = stats[0], stats[1]
    return measure
