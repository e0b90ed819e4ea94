"""Gradient profiles across depth that the vanishing and exploding rules read.

With a trunk of repeated blocks (``diagnostics.blocks``) the profile runs over the blocks of one
kind, not from the first layer to the head: a vocabulary head's gradient shrinks like 1/sqrt(vocab)
and an embedding is no block, so first-vs-last ratios mislabel healthy transformers.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from ..blocks import Block, Trunk, find_blocks
from ..measurements import LayerMeasure, Measurements
from .common import fmt, layer_label

# Fewer layers than this is not a deep profile: one or two layers cannot vanish or explode.
MIN_DEPTH = 3
# A block is "where the profile breaks" when its own backward gain carries at least this share of the
# stack's first-to-last orders of magnitude; below it the growth or decay is spread over the blocks
# (each sigmoid layer passing back <= 1/4, Glorot & Bengio 2010) and no one block is to blame.
BREAK_SHARE = 0.5
# The trunks must hold at least this share of the layers to stand for the model's depth: two heads
# in a ModuleList (multi-task) are no trunk, and the first-to-last layer profile applies instead.
TRUNK_SHARE = 0.5
# Two blocks of one repeated stack already bound one block's backward gain, the quantity that breaks.
MIN_BLOCKS = 2


@dataclass
class Profile:
    """A gradient measure in depth order, per layer or (with a trunk) per block."""

    layers: list[LayerMeasure]  # per block: its last layer, whose output is the block's output
    values: list[float]
    source: str
    names: list[str] = field(default_factory=list)  # block paths in trunk mode
    trunk: str | None = None

    @property
    def ratio(self) -> float:
        """First over last."""
        return self.values[0] / self.values[-1] if self.values[-1] > 0 else float("inf")

    def label(self, index: int) -> str:
        """The block path or layer name at a position."""
        return self.names[index] if self.names else self.layers[index].name

    def describe(self, index: int) -> str:
        """For messages: a one-layer block or a layer with its type, else 'block <path>'."""
        layer = self.layers[index]
        if not self.names or self.names[index] == layer.name:
            return layer_label(layer.name, layer.type)
        name = self.names[index]
        return f"block '{name}'" if name.replace(".", "").isdigit() else f"block {name}"

    def gains(self) -> list[float]:
        """values[k-1] / values[k]: how much block k multiplies the gradient on its way back (k >= 1)."""
        return [a / b if b > 0 else float("inf") for a, b in zip(self.values, self.values[1:], strict=False)]

    def spread_sentence(self) -> str:
        """For a profile with no single break: the typical block's backward gain."""
        return (
            f" No single block is to blame: the median block multiplies the gradient by "
            f"{fmt(statistics.median(self.gains()))} on its way back."
        )

    def break_at(self, growing: bool) -> int | None:
        """The block where the profile breaks (largest or smallest backward gain), if one block carries most of it."""
        gains = self.gains()
        if not gains or self.trunk is None:
            return None
        k = 1 + gains.index(max(gains) if growing else min(gains))
        whole = abs(math.log10(self.ratio)) if 0 < self.ratio < float("inf") else float("inf")
        mine = abs(math.log10(gains[k - 1])) if 0 < gains[k - 1] < float("inf") else float("inf")
        return k if mine >= BREAK_SHARE * whole else None


def backprop_profile(m: Measurements) -> Profile | None:
    """RMS of dL/d(layer output), Glorot & Bengio's back-propagated signal.

    Only layers whose output has the first layer's rank are compared: a global pool divides the
    per-element gradient by H*W (or T), which is not a vanishing gradient.
    """
    measured = [layer for layer in m.layers if layer.output_grad_rms]
    if not measured:
        return None
    rank = measured[0].output_rank
    same = [layer for layer in measured if layer.output_rank == rank]
    if len(same) < MIN_DEPTH:
        return None
    return Profile(same, [layer.output_grad_rms or 0.0 for layer in same], "output_grad_rms")


def weight_profile(m: Measurements) -> Profile | None:
    """||dL/dW|| / ||W|| of weight layers: how fast each layer learns relative to its size."""
    relative = [layer for layer in m.layers_with_grad() if layer.fan_in and layer.grad_to_weight]
    if len(relative) < MIN_DEPTH:
        return None
    return Profile(relative, [layer.grad_to_weight or 0.0 for layer in relative], "grad_to_weight")


def _same_kind(trunk: Trunk) -> list[Block]:
    """The blocks of the trunk's commonest kind (a block's first layer names its kind: Conv2d vs BatchNorm2d)."""
    kinds = Counter(block.signature[0] for block in trunk.blocks)
    kind = kinds.most_common(1)[0][0]
    return [block for block in trunk.blocks if block.signature[0] == kind]


def _block_output_grad(layers: list[LayerMeasure]) -> float | None:
    """dL/d(block output), read at the block's last layer: a residual add passes its gradient unchanged."""
    measured = [layer for layer in layers if layer.output_grad_rms]
    return measured[-1].output_grad_rms if measured else None


def _block_grad_to_weight(layers: list[LayerMeasure]) -> float | None:
    """||dL/dW|| / ||W|| over the block's weight layers: how fast the block learns."""
    weights = [layer for layer in layers if layer.fan_in and layer.grad_norm is not None and layer.nonfinite == 0]
    weight_sq = sum(layer.weight_norm**2 for layer in weights)
    if not weights or weight_sq == 0:
        return None
    return float((sum((layer.grad_norm or 0.0) ** 2 for layer in weights) / weight_sq) ** 0.5)


def _trunk_views(m: Measurements, trunk: Trunk) -> list[Profile]:
    """The back-propagated and the relative-weight profile over one trunk's blocks of one kind."""
    blocks = _same_kind(trunk)
    if len(blocks) < MIN_BLOCKS:
        return []
    members = [[m.layers[i] for i in block.layers] for block in blocks]
    names = [block.name for block in blocks]
    views = []
    for source, measure in (
        ("block_output_grad_rms", _block_output_grad),
        ("block_grad_to_weight", _block_grad_to_weight),
    ):
        values = [measure(layers) for layers in members]
        if all(v is not None and v > 0 for v in values):
            last = [layers[-1] for layers in members]
            views.append(Profile(last, [v or 0.0 for v in values], source, names, trunk.name))
    return views


def trunk_profiles(m: Measurements) -> list[list[Profile]] | None:
    """Per trunk, its block profiles (back-propagated first); None when the model has no trunk."""
    structure = find_blocks([layer.name for layer in m.layers], [layer.type for layer in m.layers])
    inside = sum(len(block.layers) for trunk in structure.trunks for block in trunk.blocks)
    if inside < TRUNK_SHARE * len(m.layers):
        return None
    per_trunk = [views for views in (_trunk_views(m, trunk) for trunk in structure.trunks) if views]
    return per_trunk or None


def depth_profiles(m: Measurements) -> list[list[Profile]]:
    """The profile sets the depth rules judge: one per trunk, or first-to-last layers without one."""
    trunks = trunk_profiles(m)
    if trunks is not None:
        return trunks
    layer_views = [p for p in (backprop_profile(m), weight_profile(m)) if p is not None]
    return [layer_views] if layer_views else []
