"""Remediations complete enough to apply without reading prose (docs/verify.md's params contract).

Init advice names every layer to re-draw, the scheme, the nonlinearity and its gain (as
``torch.nn.init.calculate_gain`` gives it), and the bias; snippets use the model's real module
paths. Clip norms come from the scale the model would have if nothing amplified the gradient.
"""

from __future__ import annotations

import math

from gradhealth.report import Remediation
from gradhealth.report.schema import RemediationParam

from ..measurements import LayerMeasure, Measurements
from ..options import DEFAULT_OPTIMIZER
from .common import REFS, fmt
from .lr_advice import TARGET, two_digits

# torch.nn.init.calculate_gain per activation; rectifiers without an entry there (GELU, SiLU, ...)
# are close to ReLU's half-linear variance and take its gain (He et al. 2015).
NONLINEARITY = {
    "relu": "relu",
    "relu6": "relu",
    "gelu": "relu",
    "silu": "relu",
    "elu": "relu",
    "mish": "relu",
    "leaky_relu": "leaky_relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "selu": "selu",
}
GAIN = {
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
    "tanh": 5.0 / 3.0,
    "sigmoid": 1.0,
    "selu": 0.75,
    "linear": 1.0,
}
INIT_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def nonlinearity(activation: str | None) -> str:
    """The calculate_gain name for the activation that follows a layer ('linear' when none)."""
    return NONLINEARITY.get(activation or "", "linear")


def initialisable(layer: LayerMeasure) -> bool:
    """Linear- and conv-like layers (a transformers Conv1D is linear); not embeddings, norms or RNNs."""
    return layer.kind in ("linear", "conv") if layer.kind is not None else layer.type in INIT_TYPES


def _names_literal(layers: list[str]) -> str:
    """A Python list literal of module paths for snippets, shortened past 12 entries."""
    shown = ", ".join(repr(name) for name in layers[:12])
    return f"[{shown}{', ...' if len(layers) > 12 else ''}]"


def init_snippet(layers: list[str], scheme: str, nonlin: str, bias: float | None, gain: float | None = None) -> str:
    """Re-draw the named modules' weights with the scheme, real paths, one loop (an explicit gain as a std)."""
    call = {
        "kaiming_normal": f"nn.init.kaiming_normal_(layer.weight, nonlinearity='{nonlin}')",
        "kaiming_uniform": f"nn.init.kaiming_uniform_(layer.weight, nonlinearity='{nonlin}')",
        "xavier_normal": f"nn.init.xavier_normal_(layer.weight, gain=nn.init.calculate_gain('{nonlin}'))",
        "orthogonal": f"nn.init.orthogonal_(layer.weight, gain=nn.init.calculate_gain('{nonlin}'))",
    }[scheme]
    if gain is not None and scheme == "kaiming_normal" and abs(gain - GAIN[nonlin]) > 1e-9:
        call = f"nn.init.normal_(layer.weight, std={gain:.4g} / layer.weight[0].numel() ** 0.5)  # gain/sqrt(fan_in)"
    lines = [f"for name in {_names_literal(layers)}:", "    layer = model.get_submodule(name)", f"    {call}"]
    if bias is not None:
        lines.append(f"    nn.init.constant_(layer.bias, {bias})" if bias else "    nn.init.zeros_(layer.bias)")
    return "\n".join(lines)


def reinit_remediation(
    action: str,
    detail: str,
    layers: list[str],
    activation: str | None,
    *,
    scheme: str = "kaiming_normal",
    bias: float | None = 0.0,
    references: list[str] | None = None,
    gain: float | None = None,
    input_mean: float | None = None,
) -> Remediation:
    """A re-initialisation with layers, scheme, nonlinearity, gain and bias as docs/verify.md defines them.

    The gain defaults to calculate_gain(nonlinearity); an explicit one (sigmoid's backward gain 4) is a std.
    input_mean (the mean of the activation the layers read, 1/2 for sigmoid) centres their biases.
    """
    nonlin = nonlinearity(activation)
    chosen = GAIN[nonlin] if gain is None else gain
    params: dict[str, RemediationParam] = {
        "layers": layers,
        "scheme": scheme,
        "nonlinearity": nonlin,
        "gain": chosen,
        "bias": bias,
    }
    snippet = init_snippet(layers, scheme, nonlin, bias, chosen)
    if input_mean is not None:  # centre: bias = -mean(input) x each unit's weight sum
        params["input_mean"] = input_mean
        snippet += (
            f"\n    layer.bias.data = -{input_mean} * layer.weight.flatten(1).sum(1)  # zero-mean pre-activations"
        )
    return Remediation(
        action=action,
        detail=detail,
        snippet=snippet,
        references=references or [REFS["he2015"], REFS["glorot2010"]],
        params=params,
    )


def recommended_std(layer: LayerMeasure) -> float | None:
    """Kaiming/LeCun std gain/sqrt(fan_in) for the layer's fan-in and following activation."""
    if not layer.fan_in:
        return None
    return GAIN[nonlinearity(layer.next_activation)] / math.sqrt(layer.fan_in)


def std_ratio(layer: LayerMeasure) -> float | None:
    """The layer's weight std over the variance-preserving one; None when not judged."""
    target = recommended_std(layer)
    if not initialisable(layer) or target is None or not layer.weight_std:
        return None
    return layer.weight_std / target


def off_scale(m: Measurements, mismatch: float, among: list[str] | None = None) -> list[LayerMeasure]:
    """Every initialisable layer whose std is more than `mismatch` off the variance-preserving one.

    A layer no activation follows counts as at scale anywhere from gain 1 to the ReLU gain √2.
    """
    wanted = None if among is None else set(among)
    result = []
    for layer in m.layers:
        if wanted is not None and layer.name not in wanted:
            continue
        ratio = std_ratio(layer)
        if ratio is None or 1 / mismatch <= ratio <= mismatch:
            continue
        if layer.next_activation is None and 1 / mismatch <= ratio <= mismatch * GAIN["relu"]:
            continue  # an output/branch layer at the ReLU Kaiming scale, as most code initialises it: left alone
        result.append(layer)
    return result


def feeders(m: Measurements, layer: LayerMeasure) -> list[LayerMeasure]:
    """The layers whose outputs this one reads: its serial inputs (graph), else the previous layer."""
    by_name = {other.name: other for other in m.layers}
    found = [by_name[name] for name in layer.serial_inputs or [] if name in by_name]
    if not found and layer.serial_inputs is None:
        index = m.layers.index(layer)
        found = m.layers[index - 1 : index] if index > 0 else []
    return found


def _input_rms(m: Measurements, layer: LayerMeasure) -> float | None:
    """RMS of the layer's input: its serial feeder's output, else the previous layer's."""
    values = [f.output_rms for f in feeders(m, layer) if f.output_rms]
    return max(values) if values else None


def own_input_rms(layer: LayerMeasure) -> float | None:
    """RMS of a layer's input read off its own output: y = Wx gives rms(y) ~ rms(W) sqrt(fan_in) rms(x).

    Needs no graph: a residual stream's sum reaches the head although its serial feeder is one branch.
    """
    if not layer.output_rms or not layer.weight_rms or not layer.fan_in or not initialisable(layer):
        return None
    return layer.output_rms / (layer.weight_rms * math.sqrt(layer.fan_in))


def sane_max_norm(m: Measurements) -> float | None:
    """The global gradient norm the model would have at a sane scale: a clip norm that binds and is sane.

    The output layer's gradient is dL/d(output) times its input. Divide out what inflates each: an
    input far above unit RMS (a forward signal grown through the layers; the larger of its feeder's
    output RMS and the one its own output implies) and, for MSE, a residual far
    above unit scale (raw targets or exploded outputs). Every layer of a variance-preserving network
    gets about that gradient, so the global norm is about it times sqrt(number of layers). Clipping
    at the exploded norm (or a quantile of it) never binds.
    """
    layers = [layer for layer in m.layers_with_grad() if layer.grad_norm]
    if not layers:
        return None
    last = layers[-1]
    inflation = max(1.0, _input_rms(m, last) or 1.0, own_input_rms(last) or 1.0)
    if m.targets is not None and m.targets.loss_kind == "mse" and math.isfinite(m.loss) and m.loss > 1.0:
        inflation *= math.sqrt(m.loss)
    estimate = (last.grad_norm or 0.0) / inflation * math.sqrt(len(layers))
    if m.global_grad_norm is not None and math.isfinite(m.global_grad_norm):
        estimate = min(estimate, m.global_grad_norm)
    return float(f"{estimate:.2g}") if estimate > 0 else None


def update_bound_max_norm(m: Measurements) -> float | None:
    """The clip norm at which one clipped SGD step moves the weights by the healthy 1e-3 of their norm.

    Clipped momentum SGD moves at most lr x max_norm / (1 - momentum) per step; bounding that by
    lr_advice.TARGET x ||W|| (the update size update_ratio calls healthy) gives max_norm. Under the
    analysis optimizer, or verify's default when none was given; None for Adam, whose step ignores the
    gradient's norm.
    """
    opt = m.options.optimizer or DEFAULT_OPTIMIZER
    weight_norm = math.sqrt(sum(layer.weight_norm**2 for layer in m.layers if math.isfinite(layer.weight_norm)))
    if opt.name != "sgd" or weight_norm <= 0:
        return None
    return two_digits(TARGET * weight_norm * (1.0 - opt.momentum) / opt.lr)


def with_clip(fix: Remediation, max_norm: float, lr: float) -> Remediation:
    """The same fix, and clipping at max_norm while the model settles: one remediation, one trial."""
    return Remediation(
        action=fix.action,
        detail=f"{fix.detail} And clip the global gradient norm at max_norm≈{fmt(max_norm)} while the model settles: "
        f"at lr {fmt(lr)} a clipped step then moves the weights by at most ~1e-3 of their norm (an un-normalised "
        "stack can blow up again after the fix, at gradient norms still far above that).",
        snippet=f"{fix.snippet or ''}\n# in the training loop, after loss.backward():\n"
        f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={max_norm})".lstrip("\n"),
        references=[*fix.references, REFS["pascanu2013"]],
        params={**fix.params, "max_norm": max_norm},
    )


def clip_detail(max_norm: float | None) -> str:
    """Where the clip norm comes from, in words."""
    return (
        f"Clip the global gradient norm at max_norm≈{fmt(max_norm)}: the norm this model would have if no layer "
        "amplified the gradient (the output layer's gradient with its inflated input and residual divided out, "
        "times √layers), not the exploded norm, which a clip would never reach."
    )


RECURRENT_TYPES = ("LSTM", "GRU", "RNN")


def forget_gate_remediation(lstms: list[str]) -> Remediation:
    """Forget-gate bias 1 on the named nn.LSTM modules (Jozefowicz et al. 2015; Gers et al. 2000)."""
    return Remediation(
        action="set_forget_gate_bias",
        detail=f"Set the forget-gate bias of {', '.join(lstms)} to 1 so the cell state carries the gradient "
        "back in time from the start of training (PyTorch initialises it near 0, forgetting half per step).",
        snippet="h_size = {lstm}.hidden_size\nwith torch.no_grad():\n"
        "    for name, p in {lstm}.named_parameters():  # gates i, f, g, o: f is the second quarter\n"
        "        if name.startswith('bias_ih'):\n            p[h_size:2 * h_size].fill_(1.0)\n"
        "        elif name.startswith('bias_hh'):\n            p[h_size:2 * h_size].zero_()".replace(
            "{lstm}", f"model.get_submodule({lstms[0]!r})"
        ),
        references=[REFS["jozefowicz2015"], REFS["hochreiter1997"]],
        params={"layers": lstms, "value": 1.0},
    )


def orthogonal_remediation(action: str, recurrent: list[str], detail: str) -> Remediation:
    """Orthogonal (spectral radius 1) recurrent weights on the named RNN modules, biases kept."""
    return Remediation(
        action=action,
        detail=detail,
        snippet=f"for name in {_names_literal(recurrent)}:\n    rnn = model.get_submodule(name)\n"
        "    for pname, p in rnn.named_parameters():\n        if pname.startswith('weight_'):\n"
        "            nn.init.orthogonal_(p)",
        references=[REFS["pascanu2013"], REFS["le2015"]],
        params={"layers": recurrent, "scheme": "orthogonal", "nonlinearity": "linear", "gain": 1.0, "bias": None},
    )
