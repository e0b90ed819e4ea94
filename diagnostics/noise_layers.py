"""Per-sample gradient moments of linear and conv2d layers from one backward (Goodfellow 2015; BackPACK).

A linear layer's per-sample weight gradient is the outer product d_i a_i^T of its output gradient and
input, so g_i . g_j = (a_i . a_j)(d_i . d_j) and sum_i g_i^2 = (d^2)^T (a^2) elementwise: the Gram
matrix and the per-parameter second moments without per-sample gradients. With extra (sequence) dims
and for conv2d (through unfold) the per-sample gradients are one batched matmul, the cost of the
weight gradient itself. The graph is tapped where aten.linear / aten.conv2d read a parameter that no
other node reads; d comes from the backward of sum_i loss_i, which is sample i's own gradient only when
samples do not interact in the forward, so a graph with batch norm is left to the per-sample path.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx

from .hvp import storage_key

SUBSET = 4096  # parameters per layer whose per-sample values feed the GSNR bootstrap
_TARGETS = {torch.ops.aten.linear.default: "linear", torch.ops.aten.conv2d.default: "conv2d"}
LOSS_OP = torch.ops.aten.cross_entropy_loss.default  # its input is recorded too (ggn_trace.py)
_MIXING = ("batch_norm",)  # ops through which one sample's loss depends on the others
_RECORD = threading.local()


@dataclass
class ParamSamples:
    """One parameter's per-sample gradient moments: Gram matrix, sums, squared sums, and column access."""

    gram: Tensor  # [n, n] float64: g_i . g_j
    col_sum: Tensor  # [P] float64: sum_i g_i
    col_sq: Tensor  # [P] float64: sum_i g_i^2
    take: Callable[[Tensor], Tensor]  # column indices -> [n, len] float64 per-sample values

    @staticmethod
    def from_matrix(x: Tensor) -> ParamSamples:
        """From explicit per-sample gradients [n, P]: float64 as given, else centred in float32 (from_float32)."""
        if x.dtype != torch.float64:
            return ParamSamples.from_float32(x.float())
        return ParamSamples(x @ x.T, x.sum(0), (x**2).sum(0), lambda idx: x[:, idx])

    @staticmethod
    def from_float32(x: Tensor) -> ParamSamples:
        """The same moments from float32 per-sample gradients, with float32 GEMMs on the centred matrix.

        With m the column mean (rounded to float32) and c_i = x_i - m, g_i . g_j = c_i . c_j + c_i . m + c_j . m
        + |m|^2 is assembled in float64. Every statistic is shift-invariant in exact arithmetic (tr(Sigma)
        and the variances depend on c alone; the m terms cancel in float64), so float32 only rounds the
        c products, relative to the noise itself, where a float32 Gram of x would lose tr(Sigma) to
        cancellation whenever |G|^2 >> tr(Sigma)/n. A 3c3d batch (n=128, 170k conv parameters): 0.15 s
        where the float64 Gram and column sums took 0.27 s on one CPU thread.
        """
        n = x.shape[0]
        ones = x.new_ones(n)
        mean = (ones @ x) / n  # any float32 centre works: the assembly below uses this same m
        c = x - mean
        mean64, c_sum = mean.double(), (ones @ c).double()
        cross = (c @ mean).double()  # c_i . m
        gram = (c @ c.T).double() + cross[:, None] + cross[None, :] + float(mean64 @ mean64)
        col_sum = n * mean64 + c_sum
        col_sq = (ones @ (c * c)).double() + 2 * mean64 * c_sum + n * mean64**2  # sum_i (c_ij + m_j)^2
        return ParamSamples(gram, col_sum, col_sq, lambda idx: x[:, idx].double())

    @property
    def size(self) -> int:
        """Parameters in this tensor."""
        return int(self.col_sum.numel())


@dataclass
class LayerSamples:
    """A layer's moments over all its parameters, and per-sample values on a seeded column subset."""

    gram: Tensor
    col_sum: Tensor
    col_sq: Tensor
    subset: Tensor  # [n, S]: all columns when the layer has at most SUBSET parameters

    @property
    def size(self) -> int:
        """Parameters in this layer."""
        return int(self.col_sum.numel())

    @staticmethod
    def combine(parts: Sequence[ParamSamples], seed: int = 0) -> LayerSamples:
        """Concatenate a layer's parameters and draw its bootstrap subset."""
        sizes = [p.size for p in parts]
        total = sum(sizes)
        if total <= SUBSET:
            picks = torch.arange(total)
        else:
            picks = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:SUBSET].sort().values
        columns, offset = [], 0
        for part, size in zip(parts, sizes, strict=True):
            mine = picks[(picks >= offset) & (picks < offset + size)] - offset
            if mine.numel():
                columns.append(part.take(mine.to(part.col_sum.device)).cpu())
            offset += size
        return LayerSamples(
            sum((p.gram.cpu() for p in parts), torch.zeros_like(parts[0].gram.cpu())),
            torch.cat([p.col_sum.cpu() for p in parts]),
            torch.cat([p.col_sq.cpu() for p in parts]),
            torch.cat(columns, dim=1),
        )

    @staticmethod
    def from_matrix(x: Tensor, seed: int = 0) -> LayerSamples:
        """From one explicit per-sample gradient matrix [n, P]."""
        return LayerSamples.combine([ParamSamples.from_matrix(x)], seed)


@dataclass(frozen=True)
class Tap:
    """A linear/conv2d node and the parameters only it reads."""

    key: int
    kind: str
    weight: str
    bias: str | None
    conv: (
        tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, int]] | None
    )  # stride, padding, dilation, kernel


def _record(out: Tensor, inp: Tensor, key: int) -> Tensor:
    """Graph tap: keep the layer's input and output for the backward's output gradient."""
    store = getattr(_RECORD, "store", None)
    if store is not None:
        store[key] = (inp, out)
        grads = getattr(_RECORD, "grads", None)
        if grads is not None and out.requires_grad:
            out.register_hook(_first_grad(grads, key))  # type: ignore[no-untyped-call]  # torch: register_hook is unannotated
    return out


def is_record(target: object) -> bool:
    """Whether a graph node's target is the tap recorder (plumbing: it returns its first argument)."""
    return target is _record


def _first_grad(grads: dict[int, Tensor], key: int) -> Callable[[Tensor], None]:
    """Keep the first gradient that reaches a tap's output: the pass's own, not a later HVP's through the same graph."""

    def hook(grad: Tensor) -> None:
        if key not in grads:
            grads[key] = grad.detach()

    return hook


def _conv_args(
    node: fx.Node, weight: Tensor
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, int]] | None:
    """stride, padding, dilation and kernel of a conv2d with groups=1 and list padding, else None."""
    args = list(node.args) + [None] * (7 - len(node.args))
    stride, padding, dilation, groups = (
        node.kwargs.get("stride", args[3]) or [1, 1],
        node.kwargs.get("padding", args[4]) or [0, 0],
        node.kwargs.get("dilation", args[5]) or [1, 1],
        node.kwargs.get("groups", args[6]) or 1,
    )
    if groups != 1 or not all(isinstance(v, list | tuple) for v in (stride, padding, dilation)):
        return None
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    return tuple(stride), tuple(padding), tuple(dilation), kernel  # type: ignore[arg-type]


def find_taps(gm: fx.GraphModule, named: Mapping[str, Tensor]) -> list[Tap]:
    """Linear/conv2d nodes whose weight (and bias) are trainable parameters read by that node alone."""
    if any(any(m in str(n.target) for m in _MIXING) for n in gm.graph.nodes if n.op == "call_function"):
        return []
    attrs = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target in named]
    per_storage: dict[object, int] = {}
    for n in attrs:
        key = storage_key(named[str(n.target)])
        per_storage[key] = per_storage.get(key, 0) + 1

    def own(arg: object, node: fx.Node) -> str | None:
        if not isinstance(arg, fx.Node) or arg.op != "get_attr" or arg.target not in named:
            return None
        name = str(arg.target)
        alone = len(arg.users) == 1 and per_storage[storage_key(named[name])] == 1
        return name if alone and list(arg.users) == [node] else None

    taps = []
    for index, node in enumerate(gm.graph.nodes):
        kind = _TARGETS.get(node.target) if node.op == "call_function" else None
        if kind is None or len(node.args) < 2:
            continue
        weight = own(node.args[1], node)
        bias_arg = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        bias = own(bias_arg, node)
        conv = _conv_args(node, named[weight]) if kind == "conv2d" and weight is not None else None
        if weight is None or (bias_arg is not None and bias is None) or (kind == "conv2d" and conv is None):
            continue
        taps.append(Tap(index, kind, weight, bias, conv))
    return taps


_TAPPED: weakref.WeakKeyDictionary[fx.GraphModule, tuple[fx.GraphModule, list[Tap]]] = weakref.WeakKeyDictionary()


def tapped_module(gm: fx.GraphModule, named: Mapping[str, Tensor]) -> tuple[fx.GraphModule, list[Tap]]:
    """A copy of the graph (same parameters) that records each tap's input and output; cached per graph."""
    cached = _TAPPED.get(gm)
    if cached is not None:
        return cached
    taps = find_taps(gm, named)
    graph = copy.deepcopy(gm.graph)
    nodes = list(graph.nodes)
    for tap in taps:
        node = nodes[tap.key]
        with graph.inserting_after(node):
            rec = graph.call_function(_record, (node, node.args[0], tap.key))
        node.replace_all_uses_with(rec, delete_user_cb=lambda user, rec=rec: user is not rec)
    for index, node in enumerate(nodes):  # the loss's input (the logits) for the GGN trace (ggn_trace.py)
        if node.op == "call_function" and node.target is LOSS_OP and node.args:
            with graph.inserting_after(node):
                rec = graph.call_function(_record, (node, node.args[0], index))
            node.replace_all_uses_with(rec, delete_user_cb=lambda user, rec=rec: user is not rec)
    module = fx.GraphModule(gm, graph)
    _TAPPED[gm] = (module, taps)
    return module, taps


class Recording:
    """Context in which the tapped module stores (input, output) per tap key, and with `grads` the outputs' gradients."""

    def __init__(
        self, grads: dict[int, Tensor] | None = None, store: dict[int, tuple[Tensor, Tensor]] | None = None
    ) -> None:
        self.grads = grads
        self.store: dict[int, tuple[Tensor, Tensor]] = {} if store is None else store

    def __enter__(self) -> dict[int, tuple[Tensor, Tensor]]:
        _RECORD.store = self.store
        _RECORD.grads = self.grads
        return self.store

    def __exit__(self, *exc: object) -> None:
        _RECORD.store = None
        _RECORD.grads = None


def per_sample_grads(tap: Tap, inp: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample weight gradients [n, P] (float32) and bias gradients [n, C] (float64) of a tap."""
    # a batched GEMM in the model's float32 (float64 GEMMs and unfolds cost about twice as much on CPU; each
    # entry is one sum over positions, rounded at ~1e-7); moments then go float64
    n = inp.shape[0]
    a32, d32 = inp.detach().float(), grad_out.detach().float()
    d = grad_out.detach().double()
    if tap.kind == "linear":
        a3, d3 = a32.reshape(n, -1, a32.shape[-1]), d32.reshape(n, -1, d32.shape[-1])
        return torch.bmm(d3.transpose(1, 2), a3).reshape(n, -1), d.reshape(n, -1, d.shape[-1]).sum(1)
    assert tap.conv is not None
    stride, padding, dilation, kernel = tap.conv
    unfolded = F.unfold(a32, kernel, dilation=dilation, padding=padding, stride=stride)  # [n, C_in*kh*kw, L]
    d3 = d32.reshape(n, d32.shape[1], -1)
    return torch.bmm(d3, unfolded.transpose(1, 2)).reshape(n, -1), d.reshape(n, d.shape[1], -1).sum(2)


def per_sample_sq_norms(tap: Tap, inp: Tensor, grad_out: Tensor) -> Tensor:
    """|g_i|^2 over the tap's weight and bias, per sample (float64 [n]); a 2-D linear needs no per-sample gradient."""
    if tap.kind == "linear" and inp.dim() == 2:
        a, d = inp.detach().double(), grad_out.detach().double()
        d_sq = (d * d).sum(1)
        return d_sq * (a * a).sum(1) + (d_sq if tap.bias is not None else 0.0)
    weight, bias = per_sample_grads(tap, inp, grad_out)
    total = (weight.double() ** 2).sum(1)
    return total + (bias**2).sum(1) if tap.bias is not None else total


def tap_samples(tap: Tap, inp: Tensor, grad_out: Tensor) -> dict[str, ParamSamples]:
    """Per-sample moments of the tap's weight (and bias) from its input and output gradient."""
    d = grad_out.detach().double()
    out: dict[str, ParamSamples] = {}
    if tap.kind == "linear" and inp.dim() == 2:
        a = inp.detach().double()
        aa, dd = a @ a.T, d @ d.T
        cols = a.shape[1]
        out[tap.weight] = ParamSamples(
            aa * dd,
            (d.T @ a).reshape(-1),
            ((d**2).T @ (a**2)).reshape(-1),
            lambda idx: d[:, idx // cols] * a[:, idx % cols],
        )
        if tap.bias is not None:
            out[tap.bias] = ParamSamples(dd, d.sum(0), (d**2).sum(0), lambda idx: d[:, idx])
        return out
    weight, bias = per_sample_grads(tap, inp, grad_out)
    out[tap.weight] = ParamSamples.from_matrix(weight)
    if tap.bias is not None:
        out[tap.bias] = ParamSamples.from_matrix(bias)
    return out
