"""Remedies that re-draw, rescale or re-bias named layers' parameters in place."""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from .setup import Params, RemedyError, TrialSetup, layer_parameters, names, number, optional_number

SCHEMES = ("kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "orthogonal")
NONLINEARITIES = ("relu", "leaky_relu", "tanh", "sigmoid", "linear", "selu")
_FORGET_BIAS = re.compile(r"(^|\.)bias_(ih|hh)_l\d+(_reverse)?$")


def _gain(params: Params, scheme: str) -> float:
    """The explicit gain, else torch's calculate_gain for the named nonlinearity."""
    default = "relu" if scheme.startswith("kaiming") else "linear"
    nonlinearity = params.get("nonlinearity") or default
    if nonlinearity not in NONLINEARITIES:
        raise RemedyError(f"params.nonlinearity must be one of {', '.join(NONLINEARITIES)}, got {nonlinearity!r}")
    explicit = optional_number(params, "gain", None, positive=True)
    return explicit if explicit is not None else float(torch.nn.init.calculate_gain(nonlinearity))  # type: ignore[arg-type]  # checked above


def _fans(weight: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) as torch.nn.init computes them: kernel size times channels."""
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def draw(weight: Tensor, scheme: str, gain: float, generator: torch.Generator) -> Tensor:
    """A fresh weight of the same shape under the scheme, fan-in mode, drawn from the generator."""
    fan_in, fan_out = _fans(weight)
    shape, dtype = weight.shape, weight.dtype
    if scheme == "kaiming_normal":
        return torch.randn(shape, generator=generator, dtype=dtype) * (gain / math.sqrt(fan_in))
    if scheme == "kaiming_uniform":
        bound = gain * math.sqrt(3.0 / fan_in)
        return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound
    if scheme == "xavier_normal":
        return torch.randn(shape, generator=generator, dtype=dtype) * (gain * math.sqrt(2.0 / (fan_in + fan_out)))
    if scheme == "xavier_uniform":
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        return (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound
    flat = torch.randn(shape[0], math.prod(shape[1:]), generator=generator)  # orthogonal, as torch does
    rows, cols = flat.shape
    q, r = torch.linalg.qr(flat.T if rows < cols else flat)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    q = q.T if rows < cols else q
    result: Tensor = (q * gain).reshape(shape).to(dtype)
    return result


def _weights_and_biases(setup: TrialSetup, layers: list[str]) -> tuple[list[str], list[str]]:
    """The layers' weights (>= 2 dims) and biases (1-dim, named bias*), in model order."""
    found = layer_parameters(setup, layers)
    chosen = [n for group in found.values() for n in group]
    weights = [n for n in dict.fromkeys(chosen) if setup.params[n].dim() >= 2]
    biases = [
        n for n in dict.fromkeys(chosen) if setup.params[n].dim() == 1 and n.rsplit(".", 1)[-1].startswith("bias")
    ]
    return weights, biases


def reinitialize(params: Params, setup: TrialSetup) -> None:
    """Re-draw every weight of the named layers with a scheme and gain; fill the biases, or centre them (input_mean)."""
    layers = names(params, "layers")
    scheme = params.get("scheme")
    if scheme not in SCHEMES:
        raise RemedyError(f"params.scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    gain = _gain(params, str(scheme))
    bias = optional_number(params, "bias", None)
    input_mean = optional_number(params, "input_mean", None)
    weights, biases = _weights_and_biases(setup, layers)
    if not weights:
        raise RemedyError(f"layers {layers} have no weight matrix or kernel to re-initialise")
    generator = torch.Generator().manual_seed(setup.seed)
    with torch.no_grad():
        for name in weights:
            target = setup.params[name]
            target.copy_(draw(target.detach().cpu(), str(scheme), gain, generator))
        if bias is not None:
            for name in biases:
                setup.params[name].fill_(bias)
        if input_mean is not None:
            center_biases(setup, weights, input_mean)


def center_biases(setup: TrialSetup, weights: list[str], input_mean: float) -> None:
    """bias = -input_mean x the sum of each unit's weights: zero-mean pre-activations for inputs of that mean.

    A sigmoid passes on a mean of sigmoid(0) = 1/2, so the layer reading it gets a per-unit offset of
    1/2 x its weight sum, which pushes whole units into the flat region (LeCun et al. 1998 on centring).
    """
    for name in weights:
        bias_name = name.rsplit(".", 1)[0] + ".bias" if "." in name else "bias"
        bias = setup.params.get(bias_name)
        weight = setup.params[name]
        if bias is None or bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            continue
        bias.copy_(-input_mean * weight.detach().flatten(1).sum(dim=1))


def rescale_weights(params: Params, setup: TrialSetup) -> None:
    """Multiply the named layers' weights by a factor."""
    layers = names(params, "layers")
    factor = number(params, "factor", positive=True)
    weights, _ = _weights_and_biases(setup, layers)
    if not weights:
        raise RemedyError(f"layers {layers} have no weight matrix or kernel to rescale")
    with torch.no_grad():
        for name in weights:
            setup.params[name].mul_(factor)


def fix_bias_and_init(params: Params, setup: TrialSetup) -> None:
    """Fill the named layers' biases with a value; re-draw their weights too when a scheme is given."""
    layers = names(params, "layers")
    bias = number(params, "bias")
    if params.get("scheme") is not None:
        reinitialize(params, setup)
    _, biases = _weights_and_biases(setup, layers)
    if not biases:
        raise RemedyError(f"layers {layers} have no bias to set")
    with torch.no_grad():
        for name in biases:
            setup.params[name].fill_(bias)


def set_forget_gate_bias(params: Params, setup: TrialSetup) -> None:
    """Effective LSTM forget-gate bias = value: bias_ih's forget quarter to value, bias_hh's to 0."""
    layers = names(params, "layers")
    value = optional_number(params, "value", 1.0)
    assert value is not None
    found = layer_parameters(setup, layers)
    targets = [n for group in found.values() for n in group if _FORGET_BIAS.search(n)]
    if not targets:
        raise RemedyError(f"layers {layers} have no LSTM biases (bias_ih_l*/bias_hh_l*)")
    with torch.no_grad():
        for name in targets:
            bias = setup.params[name]
            if bias.shape[0] % 4:
                raise RemedyError(f"{name} has {bias.shape[0]} entries, not 4 gates: is {layers} an LSTM?")
            hidden = bias.shape[0] // 4
            bias[hidden : 2 * hidden] = value if "bias_ih" in name else 0.0
