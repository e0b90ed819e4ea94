"""Layer structure and activation measures, read from the exported graph for the engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor

from .activations import REPORTED_KIND
from .dataflow import input_dependent
from .graph_map import LayerInfo, feeding_layer, layer_owners
from .measurements import ActivationMeasure, LayerMeasure, RecurrentMeasure
from .probes import InstrumentedGraph

DisplayName = Callable[[str], str]


def fallback_groups(module_params: Mapping[str, Tensor], types: Mapping[str, str]) -> list[tuple[str, str, list[str]]]:
    """Without a graph: parameters grouped by owning module, in registration order."""
    groups: dict[str, list[str]] = {}
    for name in module_params:
        groups.setdefault(name.rsplit(".", 1)[0] if "." in name else "", []).append(name)
    return [(path, types.get(path, "Module"), names) for path, names in groups.items()]


def main_weight(params: Mapping[str, Tensor], names: list[str]) -> str | None:
    """The layer's weight matrix or kernel (2+ dims), the tensor init schemes talk about."""
    for name in names:
        if name.rsplit(".", 1)[-1].startswith("weight") and params[name].dim() >= 2:
            return name
    for name in names:
        if params[name].dim() >= 2:
            return name
    return None


def describe_weight(measure: LayerMeasure, weight: Tensor, info: LayerInfo | None) -> None:
    """Fans and graph structure: from the ops that apply the weight when known, else its layout."""
    measure.fan_in = weight[0].numel()
    measure.fan_out = weight.shape[0] * (weight[0][0].numel() if weight.dim() > 2 else 1)
    if info is not None and info.fan_in and info.fan_out:
        measure.fan_in, measure.fan_out = info.fan_in, info.fan_out


def describe_structure(measure: LayerMeasure, info: LayerInfo | None, display: DisplayName) -> None:
    """Kind, tied aliases and serial inputs as the graph shows them."""
    if info is None:
        return
    measure.kind = info.kind
    measure.tied_with = [display(path) for path in info.tied_with]
    measure.serial_inputs = [display(path) for path in info.serial_inputs]


def activation_feeders(graph: InstrumentedGraph, infos: list[LayerInfo]) -> dict[int, str]:
    """Probe id -> the parameterised layer that computes each activation's input."""
    if not infos:
        return {}
    dependent = input_dependent(graph.module.graph)
    owners = layer_owners(infos)
    feeders: dict[int, str] = {}
    for probe_id, spec in enumerate(graph.specs):
        if spec.kind == "activation" and spec.source is not None:
            owner = feeding_layer(spec.source, owners, dependent)
            if owner is not None:
                feeders[probe_id] = owner
    return feeders


def activation_measures(
    graph: InstrumentedGraph,
    display: DisplayName,
    fwd: dict[int, dict[str, float]],
    bwd: dict[int, dict[str, Tensor]],
    feeders: dict[int, str],
) -> tuple[list[ActivationMeasure], list[RecurrentMeasure]]:
    """One measure per activation op (composites as one) and per recurrent op's input."""
    activations: list[ActivationMeasure] = []
    recurrent: list[RecurrentMeasure] = []
    seen: dict[str, int] = {}
    for probe_id, spec in enumerate(graph.specs):
        name = display(spec.path) or "(model)"
        if spec.kind in ("activation", "recurrent_gates") and probe_id in fwd:
            stats = fwd[probe_id]
            seen[name] = seen.get(name, 0) + 1
            label = name if seen[name] == 1 else f"{name}#{seen[name]}"
            kind = REPORTED_KIND.get(spec.op, spec.op) if spec.kind == "activation" else _gate_kind(spec.op)
            feeder = feeders.get(probe_id)
            activations.append(
                ActivationMeasure(
                    name=label,
                    kind=kind,
                    order=probe_id,
                    mean=stats["mean"],
                    std=stats["std"],
                    dead=stats.get("dead"),
                    saturated=stats.get("saturated"),
                    nonfinite=int(stats["nonfinite"]),
                    feeding_layer=display(feeder) if feeder is not None else None,
                    input_std=stats.get("input_std"),
                )
            )
        elif spec.kind == "recurrent_input" and probe_id in bwd and "per_step_norm" in bwd[probe_id]:
            per_step = bwd[probe_id]["per_step_norm"].cpu().tolist()
            recurrent.append(RecurrentMeasure(name=name, op=spec.op, per_step_norm=per_step))
    return activations, recurrent


def _gate_kind(op: str) -> str:
    """Recurrent gate probes report as LSTM gates or a tanh RNN's hidden state."""
    return "lstm_gates" if "lstm" in op else "tanh"


def attach_next_activation(graph: InstrumentedGraph, infos: list[LayerInfo], layers: list[LayerMeasure]) -> None:
    """Record which activation follows each layer: init schemes depend on it."""
    if not infos:
        return
    order = {node: i for i, node in enumerate(graph.module.graph.nodes)}
    act_positions = []
    for node in graph.module.graph.nodes:
        if node.op == "call_module" and node.args and isinstance(node.args[0], int):
            spec = graph.specs[node.args[0]]
            if spec.kind == "activation":
                act_positions.append((order[node], REPORTED_KIND.get(spec.op, spec.op)))
    starts = [order[info.output_node] if info.output_node is not None else None for info in infos]
    for index, layer in enumerate(layers):
        start = starts[index]
        if start is None:
            continue
        later = [s for s in starts[index + 1 :] if s is not None and s > start]
        end = min(later) if later else 10**9
        following = [kind for pos, kind in act_positions if start < pos < end]
        layer.next_activation = following[0] if following else None
