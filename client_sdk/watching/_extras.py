"""What a recorded step may add to its record besides the per-layer metrics: distributions and activations."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from ._activations import ActivationWatch
from ._layers import Layer
from ._records import HostArray, Record
from ._sketch import SketchSchedule, layer_sketches
from ._stats import _grad


class Extras:
    """Sketch and activation schedules of one handle; the handle calls sketch() before a step and attach() after."""

    def __init__(self, layers: list[Layer], sketches: SketchSchedule, activations: ActivationWatch | None) -> None:
        self.layers = layers
        self.sketches = sketches
        self.activations = activations
        self.sketch_seconds = 0.0  # the last sketch's cost: kept out of the recording budget (it has its own share)

    def bind(self, step: Callable[[], int], records: Callable[[int], bool]) -> None:
        """Activation hooks read a step's forward when that step will be recorded and their stride has passed."""
        acts = self.activations
        if acts is None:
            return

        def due() -> bool:
            now = step()
            return records(now) and (acts.last is None or now - acts.last >= acts.stride)

        acts.due = due

    def sketch(self, step: int, plain_step: float | None) -> Tensor | None:
        """The (2, L, WIDTH) distributions of a recorded step when one is due (timed: see sketch_seconds)."""
        self.sketch_seconds = 0.0
        if not self.sketches.due(step):
            return None
        start = time.perf_counter()
        grads = [[g for g in map(_grad, layer.params) if g is not None] for layer in self.layers]
        weights = [[p.detach() for p in layer.params] for layer in self.layers]
        with torch.no_grad():
            out = layer_sketches(grads, weights)
        self.sketch_seconds = time.perf_counter() - start
        self.sketches.took(step, self.sketch_seconds, plain_step)
        return out

    def attach(self, record: Record | None, sketch: Tensor | None, device: torch.device) -> None:
        """Give a recorded step its distributions and activation fractions; a step not recorded forgets them."""
        acts = self.activations
        if record is None:
            if acts is not None:
                acts.discard()
            return
        if sketch is not None:
            record.sketch = HostArray(sketch)
        if acts is not None:
            taken = acts.take(device)
            if taken is not None:
                record.activations = HostArray(taken)
                acts.last = record.step

    def close(self) -> None:
        if self.activations is not None:
            self.activations.remove()
