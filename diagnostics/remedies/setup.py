"""The trial a remedy changes, and the checks every remedy's params go through."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gradhealth.report.schema import RemediationParam
from torch import Tensor

Params = Mapping[str, RemediationParam]


class RemedyError(ValueError):
    """The params cannot be applied to this model; the message says what to fix."""


@dataclass
class TrialSetup:
    """One trial's parameters, data and optimizer settings: what a remedy may change."""

    params: dict[str, Tensor]  # the model's parameter names (as the report shows them) -> trial tensors
    inputs: tuple[Tensor, ...]
    targets: Tensor
    lr: float
    trainable: set[str] = field(default_factory=set)  # parameters the trial's optimizer updates
    max_norm: float | None = None  # clip_grad_norm_ before each step when set
    norm_type: float = 2.0
    loss_scale: float = 1.0  # static loss scale for fp16 gradient rounding
    loss_units_changed: bool = False  # targets rescaled: final losses are not comparable with the baseline's
    data_changed: bool = False  # inputs or targets transformed: rules reading the data stop firing trivially
    seed: int = 0


def number(params: Params, key: str, *, low: float | None = None, positive: bool = False) -> float:
    """A required finite number, optionally > 0 or >= low."""
    if key not in params or params[key] is None:
        raise RemedyError(f"params.{key} is required")
    return _checked(params[key], key, low=low, positive=positive)


def optional_number(
    params: Params, key: str, default: float | None, *, low: float | None = None, positive: bool = False
) -> float | None:
    """An optional finite number (default when absent or null)."""
    if params.get(key) is None:
        return default
    return _checked(params[key], key, low=low, positive=positive)


def _checked(value: object, key: str, *, low: float | None, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RemedyError(f"params.{key} must be a number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise RemedyError(f"params.{key} must be finite, got {result}")
    if positive and result <= 0:
        raise RemedyError(f"params.{key} must be > 0, got {result}")
    if low is not None and result < low:
        raise RemedyError(f"params.{key} must be >= {low}, got {result}")
    return result


def vector(params: Params, key: str, *, positive: bool = False) -> list[float]:
    """A required non-empty list of finite numbers."""
    value = params.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [float(value)]
    if not isinstance(value, list) or not value:
        raise RemedyError(f"params.{key} must be a non-empty list of numbers")
    return [_checked(v, f"{key}[{i}]", low=None, positive=positive) for i, v in enumerate(value)]


def names(params: Params, key: str) -> list[str]:
    """A required non-empty list of names (one string is accepted as a list of one)."""
    value = params.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise RemedyError(f"params.{key} must be a non-empty list of names")
    return [str(v) for v in value]


def layer_parameters(setup: TrialSetup, layers: list[str]) -> dict[str, list[str]]:
    """Parameter names under each layer path or pattern; an unknown layer is a RemedyError."""
    modules = {name.rsplit(".", 1)[0] if "." in name else "" for name in setup.params}
    found: dict[str, list[str]] = {}
    for layer in layers:
        matched = [m for m in modules if m == layer or m.startswith(layer + ".") or fnmatch.fnmatchcase(m, layer)]
        if not matched:
            known = sorted(modules)[:12]
            raise RemedyError(f"layer {layer!r} is not in the model; its layers include {known}")
        prefixes = tuple(m + "." for m in matched)
        found[layer] = [n for n in setup.params if n.startswith(prefixes)]
    return found


def parameter_names(setup: TrialSetup, patterns: list[str]) -> list[str]:
    """Parameter names matching each name or pattern; an unknown one is a RemedyError."""
    result: list[str] = []
    for pattern in patterns:
        matched = [n for n in setup.params if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise RemedyError(f"parameter {pattern!r} is not in the model; it has {sorted(setup.params)[:12]}")
        result.extend(m for m in matched if m not in result)
    return result
