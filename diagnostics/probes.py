"""Instrument an exported graph: activation, layer-output and through-time gradient probes.

Probes are graph nodes inserted after the ops they watch, so functional activations are
seen like module ones. They compute their statistics on the tensor's device without a
host sync; the engine reads all of them once, after the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, fx

from .graph_map import (
    ACTIVATION_OPS,
    RECURRENT_OPS,
    LayerInfo,
    is_float_tensor_node,
    module_scope,
)

# Derivative below 1% of its maximum counts as saturated: the unit passes <1% of the signal.
SIGMOID_FLAT_DERIVATIVE = 0.01 * 0.25  # sigma' = s(1-s) <= 0.25
TANH_FLAT_DERIVATIVE = 0.01  # tanh' = 1 - y^2 <= 1
PROBE_MODULE = "_gradhealth_probe"


@dataclass
class ProbeSpec:
    """One watched tensor in the graph."""

    kind: str  # "activation" | "layer_output" | "recurrent_input"
    path: str
    op: str
    module_type: str = ""
    time_dim: int = 1


@dataclass
class ProbeResults:
    """Raw per-probe tensors; one host copy happens when the engine reads them."""

    forward: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    backward: dict[int, dict[str, Tensor]] = field(default_factory=dict)


def _activation_stats(kind: str, value: Tensor) -> dict[str, Tensor]:
    """Dead-unit and saturation statistics of one activation output."""
    flat = value.detach().float().reshape(value.shape[0], -1) if value.dim() else value.detach()
    stats = {"mean": flat.mean(), "std": flat.std(), "nonfinite": (~torch.isfinite(flat)).sum()}
    if kind in ("relu", "relu6"):
        # A unit is dead when it is inactive for every sample of the batch.
        stats["dead"] = 1.0 - (flat > 0).any(dim=0).float().mean()
    if kind == "sigmoid":
        stats["saturated"] = (flat * (1 - flat) < SIGMOID_FLAT_DERIVATIVE).float().mean()
    elif kind == "tanh":
        stats["saturated"] = (1 - flat.square() < TANH_FLAT_DERIVATIVE).float().mean()
    elif kind == "hardsigmoid":
        stats["saturated"] = ((flat <= 0) | (flat >= 1)).float().mean()
    elif kind == "hardtanh":
        lo, hi = flat.min(), flat.max()
        stats["saturated"] = ((flat <= lo) | (flat >= hi)).float().mean() * (hi > lo).float()
    return stats


def _tensor_norms(value: Tensor) -> dict[str, Tensor]:
    data = value.detach().float()
    return {
        "rms": data.square().mean().sqrt(),
        "nonfinite": (~torch.isfinite(data)).sum(),
    }


class ProbeRecorder(torch.nn.Module):
    """The graph calls this module at every probe point."""

    def __init__(self, specs: list[ProbeSpec]) -> None:
        super().__init__()
        self.specs = specs
        self.enabled = True
        self.results = ProbeResults()

    def reset(self) -> None:
        """Forget the previous pass's statistics."""
        self.results = ProbeResults()

    def forward(self, probe_id: int, value: Tensor) -> None:
        if not self.enabled or not isinstance(value, Tensor):
            return
        spec = self.specs[probe_id]
        with torch.no_grad():
            if spec.kind == "activation":
                self.results.forward[probe_id] = _activation_stats(spec.op, value)
            elif spec.kind == "layer_output":
                self.results.forward[probe_id] = _tensor_norms(value)
        if value.requires_grad:
            value.register_hook(self._grad_hook(probe_id, spec))

    def _grad_hook(self, probe_id: int, spec: ProbeSpec):  # noqa: ANN202 - closure
        def hook(grad: Tensor) -> None:
            with torch.no_grad():
                stats = _tensor_norms(grad)
                if spec.kind == "recurrent_input" and grad.dim() >= 3:
                    per_step = grad.detach().float().transpose(0, spec.time_dim)
                    stats["per_step_norm"] = per_step.reshape(per_step.shape[0], -1).norm(dim=1)
                self.results.backward[probe_id] = stats

        return hook


@dataclass
class InstrumentedGraph:
    """A graph module with probes, and what each probe watches."""

    module: fx.GraphModule
    recorder: ProbeRecorder
    specs: list[ProbeSpec]
    layer_probe: dict[str, int]
    has_recurrent: bool


def instrument(gm: fx.GraphModule, layers: list[LayerInfo]) -> InstrumentedGraph:
    """Insert probe calls after activations, layer outputs and recurrent inputs."""
    specs: list[ProbeSpec] = []
    targets: list[tuple[fx.Node, int]] = []
    layer_probe: dict[str, int] = {}
    for layer in layers:
        if layer.output_node is not None:
            layer_probe[layer.path] = len(specs)
            specs.append(ProbeSpec("layer_output", layer.path, str(layer.output_node.target), layer.type))
            targets.append((layer.output_node, layer_probe[layer.path]))
    has_recurrent = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        path, type_name = module_scope(node)
        if node.target in ACTIVATION_OPS and is_float_tensor_node(node):
            targets.append((node, len(specs)))
            specs.append(ProbeSpec("activation", path, ACTIVATION_OPS[node.target], type_name))
        elif node.target in RECURRENT_OPS:
            batch_first = node.args[RECURRENT_OPS[node.target]] if len(node.args) > 8 else False
            source = node.args[0]
            if isinstance(source, fx.Node):
                has_recurrent = True
                targets.append((source, len(specs)))
                specs.append(
                    ProbeSpec("recurrent_input", path, str(node.target), type_name,
                              time_dim=1 if batch_first else 0)
                )
    recorder = ProbeRecorder(specs)
    gm.add_submodule(PROBE_MODULE, recorder)
    last_placeholder = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    for node, probe_id in targets:
        anchor = last_placeholder if node.op == "placeholder" else node
        with gm.graph.inserting_after(anchor):
            gm.graph.call_module(PROBE_MODULE, args=(probe_id, node))
    gm.recompile()
    return InstrumentedGraph(gm, recorder, specs, layer_probe, has_recurrent)
