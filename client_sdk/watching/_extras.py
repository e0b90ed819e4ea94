"""What a recorded step may add to its record besides the per-layer metrics: distributions and activations."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from ._activations import ActivationWatch
from ._layers import Layer
from ._records import HostArray, Record
from ._shard_sketch import LEVELS, merge
from ._sketch import QUANTILES, SketchSchedule, layer_sketches
from ._stats import _grad
from .distributed import _local, owns


class Extras:
    """Sketch and activation schedules of one handle; the handle calls sketch() before a step and attach() after."""

    def __init__(self, layers: list[Layer], sketches: SketchSchedule, activations: ActivationWatch | None) -> None:
        self.layers = layers
        self.sketches = sketches
        self.activations = activations
        self.sketch_seconds = 0.0  # the last sketch's cost: kept out of recording's measurements (docs/runs.md)
        self.shard_rank: int | None = None  # FSDP: sketch this rank's local shards (summaries that rank 0 merges)

    def shard(self, rank: int) -> None:
        """Under FSDP2: summarise the local shards this rank owns; the stride is the one rank 0 offers."""
        self.shard_rank = rank
        self.sketches.agreed = 0

    def bind(self, step: Callable[[], int], records: Callable[[int], bool]) -> None:
        """Activation hooks read a step's forward when that step will be recorded and their stride has passed."""
        acts = self.activations
        if acts is None:
            return

        def due() -> bool:
            now = step()
            return records(now) and (acts.last is None or now - acts.last >= acts.stride)

        acts.due = due

    def sketch(self, step: int, plain_step: float | None, recording: float | None) -> Tensor | None:
        """The (2, L, WIDTH) distributions of a recorded step when one is due (timed: see sketch_seconds);
        under FSDP this rank's (2, L, SUMMARY) shard summaries. `recording`: recording's measured overhead."""
        self.sketch_seconds = 0.0
        if not self.sketches.due(step, plain_step):
            return None
        start = time.perf_counter()
        rank, levels = self.shard_rank, QUANTILES if self.shard_rank is None else LEVELS
        params = [[p for p in layer.params if rank is None or owns(p, rank)] for layer in self.layers]
        grads = [[_local(g) for g in map(_grad, kept) if g is not None] for kept in params]
        weights = [[_local(p.detach()) for p in kept] for kept in params]
        with torch.no_grad():
            out = layer_sketches(grads, weights, levels)
        self.sketch_seconds = time.perf_counter() - start
        self.sketches.took(step, self.sketch_seconds, plain_step, recording)
        return out

    def merge(self, gathered: Tensor, plain_step: float | None, recording: float | None) -> Tensor:
        """Rank 0 under FSDP: the (2, L, WIDTH) distributions from every rank's summaries (timed with the sketch)."""
        start = time.perf_counter()
        out = merge(gathered.cpu()).float().view(2, len(self.layers), -1)
        self.sketch_seconds = time.perf_counter() - start
        self.sketches.charge(self.sketch_seconds, plain_step, recording)
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
