"""Activation functions in an exported graph, composite ones included, and their derivatives.

Libraries often spell an activation as elementwise ops: GPT-2's GELU is
x*0.5*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3))), SiLU is x*sigmoid(x), Mish is x*tanh(softplus(x)).
Such a composite is reported as the function it computes; its inner tanh/sigmoid/erf is not an
activation of its own. Flat units are judged on the pre-activation x with the function's own
derivative, so one definition serves every function.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, fx

from .graph_map import ACTIVATION_OPS, is_float_tensor_node

aten = torch.ops.aten

# A unit is flat where |f'(x)| is below 1% of the function's largest |f'|: it passes less than 1%
# of the gradient the function can pass. The same bound defines saturated sigmoid/tanh units.
FLAT_DERIVATIVE_FRACTION = 0.01

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _normal_cdf(x: Tensor) -> Tensor:
    """Phi(x), the standard normal CDF."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu(x: Tensor) -> Tensor:
    """d/dx x*Phi(x)."""
    return _normal_cdf(x) + x * torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _gelu_tanh(x: Tensor) -> Tensor:
    """d/dx of GELU's tanh approximation."""
    t = torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)


def _silu(x: Tensor) -> Tensor:
    """d/dx x*sigmoid(x)."""
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _mish(x: Tensor) -> Tensor:
    """d/dx x*tanh(softplus(x))."""
    t = torch.tanh(torch.nn.functional.softplus(x))
    return t + x * torch.sigmoid(x) * (1 - t * t)


def _hardswish(x: Tensor) -> Tensor:
    """d/dx x*relu6(x+3)/6."""
    return torch.where(x < -3, 0.0, torch.where(x > 3, 1.0, (2 * x + 3) / 6))


# f'(x) of the activations judged on their input; scale factors (SELU's lambda) cancel in the ratio.
DERIVATIVES: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": _silu,
    "mish": _mish,
    "elu": lambda x: torch.where(x > 0, 1.0, torch.exp(x.clamp_max(0))),
    "selu": lambda x: torch.where(x > 0, 1.0, 1.6732632 * torch.exp(x.clamp_max(0))),
    "softplus": torch.sigmoid,
    "hardswish": _hardswish,
}
# Which function a derivative key reports as.
REPORTED_KIND = {"gelu_tanh": "gelu"}


_GRID = (-12.0, 12.0, 48001)  # x range and points (step 5e-4) on which derivatives are tabulated


@functools.cache
def max_derivative(key: str) -> float:
    """The largest |f'| over a fine grid: the reference the flat bound is relative to."""
    return float(DERIVATIVES[key](torch.linspace(*_GRID, dtype=torch.float64)).abs().max())


@functools.cache
def flat_intervals(key: str) -> tuple[tuple[float, float], ...]:
    """The x intervals where |f'| < FLAT_DERIVATIVE_FRACTION * max |f'| (open-ended at the grid's ends).

    Tabulated once, so a probe tests a few comparisons per element instead of evaluating f'.
    """
    grid = torch.linspace(*_GRID, dtype=torch.float64)
    flat = (DERIVATIVES[key](grid).abs() < FLAT_DERIVATIVE_FRACTION * max_derivative(key)).tolist()
    points = grid.tolist()
    intervals: list[tuple[float, float]] = []
    start: float | None = None
    for index, is_flat in enumerate(flat):
        if is_flat and start is None:
            start = -math.inf if index == 0 else points[index]
        if start is not None and (not is_flat or index == len(flat) - 1):
            end = math.inf if is_flat else points[index - 1]
            intervals.append((start, end))
            start = None
    return tuple(intervals)


def flat_mask(key: str, x: Tensor) -> Tensor:
    """Elements where the function passes less than FLAT_DERIVATIVE_FRACTION of its best gradient."""
    mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    for low, high in flat_intervals(key):
        mask |= (x >= low) & (x <= high) if math.isfinite(low) and math.isfinite(high) else _half_line(x, low, high)
    return mask


def _half_line(x: Tensor, low: float, high: float) -> Tensor:
    """x <= high, x >= low, or everything, for an interval open at one or both ends."""
    if math.isfinite(high):
        return x <= high
    return x >= low if math.isfinite(low) else torch.ones(x.shape, dtype=torch.bool, device=x.device)


@functools.cache
def gaussian_flat_share(key: str, std: float) -> float:
    """Share of flat units when the pre-activations are N(0, std^2): what a given scale costs."""
    grid = torch.linspace(*_GRID, dtype=torch.float64)
    weights = torch.exp(-0.5 * grid * grid)
    flat = flat_mask(key, grid * std).double()
    return float((flat * weights).sum() / weights.sum())


@dataclass(frozen=True)
class ActivationSite:
    """One activation in the graph: where its result is, what it reads, how to judge it."""

    key: str  # derivative key or probes' output-based kind
    output: fx.Node
    input: fx.Node | None
    inner: frozenset[fx.Node]  # ops of a composite, never reported on their own

    @property
    def kind(self) -> str:
        """The function's name in reports."""
        return REPORTED_KIND.get(self.key, self.key)


def find_activations(graph: fx.Graph) -> list[ActivationSite]:
    """Every activation, single-op or composite, in graph order of its result."""
    composites = [site for node in graph.nodes if (site := _composite(node)) is not None]
    inner = frozenset().union(*(site.inner for site in composites)) if composites else frozenset()
    sites = list(composites)
    for node in graph.nodes:
        if node in inner or node.target not in ACTIVATION_OPS or not is_float_tensor_node(node):
            continue
        key = ACTIVATION_OPS[node.target]
        if key == "gelu" and node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none") == "tanh":
            key = "gelu_tanh"
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        sites.append(ActivationSite(key, node, source, frozenset()))
    order = {node: i for i, node in enumerate(graph.nodes)}
    return sorted(sites, key=lambda site: order[site.output])


def _composite(node: fx.Node) -> ActivationSite | None:
    """Match the composite whose characteristic op (tanh, erf, sigmoid) is node."""
    if node.target is aten.tanh.default:
        return _tanh_gelu(node) or _mish_composite(node)
    if node.target is aten.erf.default:
        return _erf_gelu(node)
    if node.target is aten.sigmoid.default:
        return _swish(node)
    if node.target in (aten.hardtanh.default, aten.relu6.default):
        return _hard_composite(node)
    return None


_MUL = (aten.mul.Tensor, aten.mul.Scalar)
_ADD = (aten.add.Tensor, aten.add.Scalar)
_DIV = (aten.div.Tensor, aten.div.Scalar)


def _scalar_other(node: object, target: tuple[object, ...], value: float | None = None) -> fx.Node | None:
    """For a target(a, number) node, a; optionally only when the number is close to value."""
    if not isinstance(node, fx.Node) or node.target not in target or len(node.args) != 2:
        return None
    a, b = node.args
    tensor, number = (a, b) if isinstance(b, int | float) else (b, a)
    if not isinstance(tensor, fx.Node) or not isinstance(number, int | float):
        return None
    if value is not None and not math.isclose(float(number), value, rel_tol=1e-3):
        return None
    return tensor


def _tanh_gelu(tanh: fx.Node) -> ActivationSite | None:
    """tanh(c*(x + 0.044715*x^3)) inside x*0.5*(1+tanh(...))."""
    inner = _scalar_other(tanh.args[0], _MUL, _SQRT_2_OVER_PI)
    if inner is None or inner.target not in _ADD or len(inner.args) != 2:
        return None
    for x, cubic in (inner.args, inner.args[::-1]):
        cube = _scalar_other(cubic, _MUL, 0.044715)
        if isinstance(x, fx.Node) and cube is not None and cube.target is aten.pow.Tensor_Scalar:
            if cube.args[0] is x and float(cube.args[1]) == 3.0:  # type: ignore[arg-type]  # fx args are untyped
                return _close(tanh, x, "gelu_tanh", {tanh, inner, cubic, cube})  # type: ignore[arg-type]
    return None


def _erf_gelu(erf: fx.Node) -> ActivationSite | None:
    """erf(x/sqrt(2)) inside x*0.5*(1+erf(...))."""
    x = _scalar_other(erf.args[0], _MUL, 1 / math.sqrt(2.0)) or _scalar_other(erf.args[0], _DIV, math.sqrt(2.0))
    return None if x is None else _close(erf, x, "gelu", {erf, erf.args[0]})  # type: ignore[arg-type]


def _mish_composite(tanh: fx.Node) -> ActivationSite | None:
    """tanh(softplus(x)) inside x*tanh(softplus(x))."""
    source = tanh.args[0]
    if not isinstance(source, fx.Node) or source.target is not aten.softplus.default:
        return None
    x = source.args[0]
    return _close(tanh, x, "mish", {tanh, source}) if isinstance(x, fx.Node) else None


def _swish(sigmoid: fx.Node) -> ActivationSite | None:
    """sigmoid(x) multiplied by x."""
    x = sigmoid.args[0]
    if not isinstance(x, fx.Node):
        return None
    for user in sigmoid.users:
        if user.target in _MUL and x in user.args:
            return ActivationSite("silu", user, x, frozenset({sigmoid, user}))
    return None


def _hard_composite(clamp: fx.Node) -> ActivationSite | None:
    """relu6(x+3)/6 is hardsigmoid; x times it (divided by 6 before or after) is hardswish."""
    x = _scalar_other(clamp.args[0], _ADD, 3.0)
    if x is None or (clamp.target is aten.hardtanh.default and tuple(clamp.args[1:3]) != (0.0, 6.0)):
        return None
    nodes = {clamp}
    scaled = _sixth(clamp)
    current = scaled or clamp
    product = next((u for u in current.users if u.target in _MUL and x in u.args), None)
    if product is None:
        return ActivationSite("hardsigmoid", scaled, x, frozenset(nodes | {scaled})) if scaled else None
    result = product if scaled else _sixth(product)
    if result is None:
        return None
    return ActivationSite(
        "hardswish", result, x, frozenset(nodes | {product, result} | ({scaled} if scaled else set()))
    )


def _sixth(node: fx.Node) -> fx.Node | None:
    """The user dividing node by 6 (or multiplying by 1/6), if any."""
    for user in node.users:
        if _scalar_other(user, _DIV, 6.0) is node or _scalar_other(user, _MUL, 1 / 6) is node:
            return user
    return None


def _close(core: fx.Node, x: fx.Node, key: str, inner: set[fx.Node]) -> ActivationSite | None:
    """Follow core through 1+core and the multiply by x (or 0.5*x) to the composite's result."""
    plus_one = next((u for u in core.users if _scalar_other(u, _ADD, 1.0) is core), None)
    if plus_one is None:
        plus_one = core if key == "mish" else None
    if plus_one is None:
        return None
    halves = {x} | {u for u in x.users if _scalar_other(u, _MUL, 0.5) is x}
    product = next((u for u in plus_one.users if u.target in _MUL and set(u.args) & halves), None)
    if product is None:
        return None
    result = product
    half = next(iter(product.users), None) if len(product.users) == 1 else None
    if x in product.args and key != "mish" and _scalar_other(half, _MUL, 0.5) is product:
        result = half  # type: ignore[assignment]  # x*(1+t)*0.5
    nodes = inner | {plus_one, product, result} | {a for a in product.args if isinstance(a, fx.Node) and a in halves}
    nodes.discard(x)
    return ActivationSite(key, result, x, frozenset(nodes))
