"""Gradient profiles across depth that the vanishing and exploding rules read."""

from __future__ import annotations

from dataclasses import dataclass

from ..measurements import LayerMeasure, Measurements

# Fewer layers than this is not a deep profile: one or two layers cannot vanish or explode.
MIN_DEPTH = 3


@dataclass
class Profile:
    """A per-layer gradient measure in depth order."""

    layers: list[LayerMeasure]
    values: list[float]
    source: str

    @property
    def ratio(self) -> float:
        """First layer over last layer."""
        return self.values[0] / self.values[-1] if self.values[-1] > 0 else float("inf")


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
