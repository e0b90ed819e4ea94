"""The graph trials train after their first step: the exported one without probes or per-call input checks."""

from __future__ import annotations

import copy
import dataclasses

from torch import fx

from .loading import LoadedModel
from .probes import PROBE_MODULE

# Calls a trial step does not need once the inputs were checked: our probes (off during trials anyway, but
# each still costs a module call) and torch.export's input guards (the same shapes, every step).
SKIPPED_CALLS = frozenset({PROBE_MODULE, "_guards_fn"})


def lean_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of the graph without the skipped calls, over the very same parameter and buffer tensors.

    fx.GraphModule copies each attribute the graph reads by reference, so a trial's updates, a remedy's
    in-place edits and the snapshot's restore act on both; and a plain GraphModule carries none of the
    exported module's forward hooks (its input-constraint pre-hook).
    """
    graph = copy.deepcopy(gm.graph)  # keeps the pytree codegen (the exported calling convention)
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target in SKIPPED_CALLS and not node.users:
            graph.erase_node(node)
    return fx.GraphModule(gm, graph, class_name="TrialGraphModule")


def lean_model(loaded: LoadedModel) -> LoadedModel:
    """The model a trial's later steps run: the lean graph when there is one, else the model itself."""
    if loaded.graph_module is None or loaded.graph_module is not loaded.module:
        return loaded
    lean = lean_graph_module(loaded.graph_module)
    return dataclasses.replace(loaded, module=lean, graph_module=lean)
