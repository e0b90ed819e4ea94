"""Instrument an exported graph: activation, layer-output and through-time gradient probes.

Probes are graph nodes inserted after the ops they watch, so functional activations are
seen like module ones. They compute their statistics on the tensor's device without a
host sync; the engine reads all of them once, after the backward pass.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx

from .activations import DERIVATIVES, FLAT_DERIVATIVE_FRACTION, find_activations, flat_mask
from .graph_map import (
    RECURRENT_OPS,
    LayerInfo,
    module_scope,
)

# Derivative below FLAT_DERIVATIVE_FRACTION of its maximum counts as saturated (activations.py).
SIGMOID_FLAT_DERIVATIVE = FLAT_DERIVATIVE_FRACTION * 0.25  # sigma' = s(1-s) <= 0.25
TANH_FLAT_DERIVATIVE = FLAT_DERIVATIVE_FRACTION  # tanh' = 1 - y^2 <= 1
PROBE_MODULE = "_gradhealth_probe"


@dataclass
class ProbeSpec:
    """One watched tensor in the graph."""

    kind: str  # "activation" | "layer_output" | "recurrent_input"
    path: str
    op: str  # for activations: the derivative key (activations.DERIVATIVES) or an output-judged kind
    module_type: str = ""
    time_dim: int = 1
    output_rank: int = 0
    source: fx.Node | None = None  # an activation's input (pre-activation) in the graph


@dataclass
class ProbeResults:
    """Raw per-probe tensors; one host copy happens when the engine reads them."""

    forward: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    backward: dict[int, dict[str, Tensor]] = field(default_factory=dict)


# Bounds equivalent to the derivative thresholds, so each test is one comparison per element.
_SIGMOID_FLAT_DISTANCE = (0.25 - SIGMOID_FLAT_DERIVATIVE) ** 0.5  # |s - 1/2| above this
_TANH_FLAT_MAGNITUDE = (1 - TANH_FLAT_DERIVATIVE) ** 0.5  # |y| above this


def _fraction(mask: Tensor) -> Tensor:
    return torch.count_nonzero(mask) / max(mask.numel(), 1)


def _mean_std(data: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std from one sum and one fused norm: two fast passes instead of std_mean's slower one."""
    n = max(data.numel(), 1)
    mean = data.sum(dtype=torch.float32) / n
    mean_sq = torch.linalg.vector_norm(data, dtype=torch.float32).square() / n
    return mean, (mean_sq - mean.square()).clamp_min(0).sqrt()


def _rows(value: Tensor) -> Tensor:
    """[batch, units] view of a tensor (units: every element of one sample)."""
    data = value.detach()
    return data.reshape(data.shape[0], -1) if data.dim() > 1 else data.reshape(-1, 1)


def _activation_stats(kind: str, value: Tensor, source: Tensor | None = None) -> dict[str, Tensor]:
    """Dead-unit and saturation statistics of one activation output, in as few passes as possible.

    Functions in activations.DERIVATIVES are judged on their input (source) by their derivative;
    the others (ReLU, sigmoid, tanh, hard variants) on their output, which determines it.
    """
    flat = _rows(value)
    mean, std = _mean_std(flat)
    stats = {"mean": mean, "std": std, "nonfinite": (~torch.isfinite(mean + std)).float()}
    if kind in DERIVATIVES:
        if isinstance(source, Tensor) and source.shape == value.shape:
            pre = _rows(source)
            stats["saturated"] = _fraction(flat_mask(kind, pre))
            stats["input_std"] = _mean_std(pre)[1]
        return stats
    if kind in ("relu", "relu6"):
        # A unit is dead when it is inactive for every sample of the batch.
        stats["dead"] = 1.0 - _fraction(flat.amax(dim=0) > 0)
    if kind == "sigmoid":
        stats["saturated"] = _fraction((flat - 0.5).abs() > _SIGMOID_FLAT_DISTANCE)
    elif kind == "tanh":
        stats["saturated"] = _fraction(flat.abs() > _TANH_FLAT_MAGNITUDE)
    elif kind == "hardsigmoid":
        stats["saturated"] = _fraction((flat <= 0) | (flat >= 1))
    elif kind == "hardtanh":
        lo, hi = flat.min(), flat.max()
        stats["saturated"] = _fraction((flat <= lo) | (flat >= hi)) * (hi > lo).float()
    return stats


def _tensor_norms(value: Tensor) -> dict[str, Tensor]:
    """RMS in one fused pass; a non-finite RMS flags NaN/Inf without an isfinite pass."""
    data = value.detach()
    rms = torch.linalg.vector_norm(data, dtype=torch.float32) / max(data.numel(), 1) ** 0.5
    return {"rms": rms, "nonfinite": (~torch.isfinite(rms)).float()}


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

    def forward(self, probe_id: int, value: Tensor, *context: object) -> None:
        if not self.enabled or not isinstance(value, Tensor):
            return
        spec = self.specs[probe_id]
        with torch.no_grad():
            if spec.kind == "activation":
                source = context[0] if context and isinstance(context[0], Tensor) else None
                self.results.forward[probe_id] = _activation_stats(spec.op, value, source)
            elif spec.kind == "layer_output":
                self.results.forward[probe_id] = _tensor_norms(value)
            elif spec.kind == "recurrent_gates":
                self.results.forward[probe_id] = recurrent_gate_stats(spec, value, *_gate_inputs(context))
                return
        if value.requires_grad:
            value.register_hook(self._grad_hook(probe_id, spec))  # type: ignore[no-untyped-call]  # torch: Tensor.register_hook is unannotated

    def _grad_hook(self, probe_id: int, spec: ProbeSpec) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            if not self.enabled:  # a later second-order pass through the same graph (the curvature check's HVPs)
                return
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


@dataclass
class _Plan:
    """Probes to insert: a spec each, placed after a node, some with extra tensors to read."""

    specs: list[ProbeSpec] = field(default_factory=list)
    targets: list[tuple[fx.Node, int]] = field(default_factory=list)
    context: list[tuple[fx.Node, int, tuple[fx.node.Argument, ...]]] = field(default_factory=list)
    layer_probe: dict[str, int] = field(default_factory=dict)
    has_recurrent: bool = False

    def add(self, spec: ProbeSpec, node: fx.Node, extra: tuple[fx.node.Argument, ...] = ()) -> int:
        """Watch node with spec (reading extra too); returns the probe id."""
        probe_id = len(self.specs)
        self.specs.append(spec)
        if extra:
            self.context.append((node, probe_id, extra))
        else:
            self.targets.append((node, probe_id))
        return probe_id


def instrument(gm: fx.GraphModule, layers: list[LayerInfo]) -> InstrumentedGraph:
    """Insert probe calls after activations, layer outputs and recurrent inputs."""
    plan = _Plan()
    for layer in layers:
        if layer.output_node is not None:
            val = layer.output_node.meta.get("val")
            rank = val.dim() if isinstance(val, Tensor) else 0
            spec = ProbeSpec("layer_output", layer.path, str(layer.output_node.target), layer.type, output_rank=rank)
            plan.layer_probe[layer.path] = plan.add(spec, layer.output_node)
    sites = {site.output: site for site in find_activations(gm.graph)}
    for node in list(gm.graph.nodes):  # graph order, so probe ids follow the forward
        if node in sites:
            site = sites[node]
            path, type_name = module_scope(node)
            extra = (site.input,) if site.key in DERIVATIVES and site.input is not None else ()
            plan.add(ProbeSpec("activation", path, site.key, type_name, source=site.input), node, extra)
        elif node.op == "call_function" and node.target in RECURRENT_OPS:
            _plan_recurrent(plan, node)
    recorder = ProbeRecorder(plan.specs)
    gm.add_submodule(PROBE_MODULE, recorder)
    last_placeholder = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    for node, probe_id in plan.targets:
        anchor = last_placeholder if node.op == "placeholder" else node
        with gm.graph.inserting_after(anchor):
            gm.graph.call_module(PROBE_MODULE, args=(probe_id, node))
    for node, probe_id, args in plan.context:
        with gm.graph.inserting_after(node):
            gm.graph.call_module(PROBE_MODULE, args=(probe_id, node, *args))
    gm.recompile()
    return InstrumentedGraph(gm, recorder, plan.specs, plan.layer_probe, plan.has_recurrent)


def _plan_recurrent(plan: _Plan, node: fx.Node) -> None:
    """A recurrent op's input (gradient through time) and, where recomputable, its gates."""
    path, type_name = module_scope(node)
    batch_first = node.args[RECURRENT_OPS[node.target]] if len(node.args) > 8 else False
    time_dim = 1 if batch_first else 0
    source = node.args[0]
    if isinstance(source, fx.Node):
        plan.has_recurrent = True
        plan.add(ProbeSpec("recurrent_input", path, str(node.target), type_name, time_dim=time_dim), source)
    gate_probe = _gate_probe(node, path, type_name, bool(batch_first))
    if gate_probe is not None:
        output, args = gate_probe
        plan.add(ProbeSpec("recurrent_gates", path, str(node.target), type_name, time_dim=time_dim), output, args)


def _gate_probe(
    node: fx.Node, path: str, type_name: str, batch_first: bool
) -> tuple[fx.Node, tuple[fx.node.Argument, ...]] | None:
    """For single-layer, one-direction tanh RNNs and LSTMs: (output-sequence node, op inputs)."""
    if node.target not in (torch.ops.aten.lstm.input, torch.ops.aten.rnn_tanh.input) or len(node.args) < 9:
        return None
    _, hx, params, has_biases, num_layers, _, _, bidirectional, _ = node.args[:9]
    if num_layers != 1 or bidirectional or not has_biases:
        return None
    outputs = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
    if not outputs:
        return None
    return outputs[0], (node.args[0], hx, params)


def _gate_inputs(context: tuple[object, ...]) -> tuple[Tensor, Tensor | Sequence[Tensor], Sequence[Tensor]]:
    """The recurrent op's input, hx (a tensor for rnn_tanh, [h0, c0] for lstm) and weights, as wired by `instrument`."""
    x, hx, params = context
    if not isinstance(x, Tensor) or not isinstance(hx, Tensor | list | tuple) or not isinstance(params, list | tuple):
        raise TypeError(f"recurrent gate probe expects (tensor, tensors, tensors), got {[type(c) for c in context]}")
    return x, hx, params


# Saturation inside a recurrent op: the input gate, cell candidate and output gate of an LSTM
# (a forget gate near 1 is the LSTM working as designed), or the hidden state of a tanh RNN.
def recurrent_gate_stats(
    spec: ProbeSpec, output: Tensor, x: Tensor, hx: Tensor | Sequence[Tensor], params: Sequence[Tensor]
) -> dict[str, Tensor]:
    """Recompute the gates from the op's inputs and output sequence; one matmul per weight."""
    seq = output.detach().float()
    if spec.time_dim == 0:
        seq, x = seq.transpose(0, 1), x.transpose(0, 1)
    if "rnn_tanh" in spec.op:
        flat = seq.reshape(seq.shape[0], -1)
        stats = _activation_stats("tanh", flat)
        return {k: v for k, v in stats.items() if k in ("saturated", "mean", "std", "nonfinite")}
    w_ih, w_hh, b_ih, b_hh = (t.detach().float() for t in params)
    h0 = hx[0].detach().float()[0]
    previous = torch.cat([h0.unsqueeze(1), seq[:, :-1]], dim=1)
    gates = x.detach().float() @ w_ih.T + b_ih + previous @ w_hh.T + b_hh
    i, _, g, o = gates.chunk(4, dim=-1)
    sig = torch.sigmoid(torch.cat([i, o], dim=-1))
    flat_sat = torch.count_nonzero((sig - 0.5).abs() > _SIGMOID_FLAT_DISTANCE) + torch.count_nonzero(
        torch.tanh(g).abs() > _TANH_FLAT_MAGNITUDE
    )
    std, mean = torch.std_mean(sig)
    return {
        "saturated": flat_sat / (sig.numel() + g.numel()),
        "mean": mean,
        "std": std,
        "nonfinite": (~torch.isfinite(mean + std)).float(),
    }
