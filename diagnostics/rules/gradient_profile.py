"""The back-propagated gradient profile across depth that both gradient-flow rules read."""

from __future__ import annotations

from dataclasses import dataclass

from ..measurements import LayerMeasure, Measurements


@dataclass
class Profile:
    """Gradient magnitude per layer in depth order, and the ratio first/last."""

    layers: list[LayerMeasure]
    values: list[float]
    source: str

    @property
    def ratio(self) -> float:
        """Gradient at the first layer over the last: Glorot & Bengio's back-propagated signal."""
        return self.values[0] / self.values[-1] if self.values[-1] > 0 else float("inf")


# Fewer layers than this is not a "deep" profile: one or two layers cannot vanish or explode.
MIN_DEPTH = 3


def gradient_profile(m: Measurements) -> Profile | None:
    """Prefer the gradient at layer outputs (the back-propagated signal); else ||g||/||W||."""
    measured = [layer for layer in m.layers if layer.output_grad_rms is not None and layer.output_grad_rms > 0]
    if len(measured) >= MIN_DEPTH:
        return Profile(measured, [layer.output_grad_rms or 0.0 for layer in measured], "output_grad_rms")
    relative = [layer for layer in m.layers_with_grad() if (layer.grad_to_weight or 0) > 0 and layer.fan_in]
    if len(relative) >= MIN_DEPTH:
        return Profile(relative, [layer.grad_to_weight or 0.0 for layer in relative], "grad_to_weight")
    return None
