"""Recorded steps on their way to the service: async host copies, loss bookkeeping, a bounded buffer."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

LossValue = Tensor | float


class HostArray:
    """A device tensor on its way to host memory: pinned + non_blocking + event on CUDA, plain elsewhere."""

    __slots__ = ("_event", "_host")

    def __init__(self, tensor: Tensor) -> None:
        tensor = tensor.detach()
        self._event: torch.cuda.Event | None = None
        if tensor.is_cuda:
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(tensor.device))
        else:
            self._host = tensor.cpu()

    def numpy(self) -> np.ndarray:
        """The values; on CUDA waits for this copy only (called from the background thread)."""
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy()


@dataclass
class Loss:
    """The losses logged for one step: host values summed now, device ones summed on the device."""

    host_sum: float
    host_count: int
    device_sum: HostArray | None
    device_count: int

    def value(self) -> float:
        """Their mean; waits for the device part's copy (background thread only)."""
        total = self.host_sum + (float(self.device_sum.numpy()[0]) if self.device_sum is not None else 0.0)
        return total / (self.host_count + self.device_count)


def _on_device(value: LossValue) -> bool:
    return isinstance(value, Tensor) and not value.is_cpu


def mean_loss(values: list[LossValue]) -> Loss | None:
    """The losses of one step, without a device sync on the training thread (CPU tensors are read now)."""
    if not values:
        return None
    device = [v for v in values if _on_device(v)]
    host = [float(v.float().mean()) if isinstance(v, Tensor) else float(v) for v in values if not _on_device(v)]
    device_sum = HostArray(torch.stack([v.float().mean() for v in device]).sum().reshape(1)) if device else None
    return Loss(sum(host), len(host), device_sum, len(device))


@dataclass(eq=False)
class Record:
    """One recorded step: its statistics vector (host copy under way) and the losses logged for it."""

    step: int
    values: HostArray
    lr: float | None
    lr_in_values: bool = False  # a tensor lr travels as the last element of `values`
    stride: int = 1  # the recording interval in force when it was taken: optimizer steps each record stands for
    losses: list[LossValue] = field(default_factory=list)
    auto_losses: list[LossValue] = field(default_factory=list)
    loss: Loss | None = None
    sketch: HostArray | None = None  # (2, L, WIDTH) gradient and weight distributions (_sketch), on sketched steps
    activations: HostArray | None = None  # (2, A) dead and saturated fractions (_activations), when read

    def seal(self, explicit: bool) -> Record:
        """Fix the loss: the logged ones if the user logs losses, else those picked up from forward()."""
        self.loss = mean_loss(self.losses if explicit else self.auto_losses)
        self.losses, self.auto_losses = [], []
        return self

    def loss_value(self) -> float | None:
        return self.loss.value() if self.loss is not None else None


class RecordBuffer:
    """Sealed records waiting for the background thread: at most `capacity`, the oldest dropped and counted."""

    def __init__(self, capacity: int, wake_at: int, on_first_drop: Callable[[], None]) -> None:
        self.capacity = capacity
        self.wake_at = wake_at
        self.cond = threading.Condition()
        self.dropped = 0  # records that never reached the service, in total
        self._unreported = 0  # drops not yet announced to the service in a batch's `dropped`
        self._records: deque[Record] = deque()
        self._on_first_drop = on_first_drop

    def __len__(self) -> int:
        return len(self._records)

    def append(self, record: Record) -> None:
        with self.cond:
            dropped = len(self._records) >= self.capacity
            if dropped:
                self._records.popleft()
                self.dropped += 1
                self._unreported += 1
            self._records.append(record)
            if len(self._records) >= self.wake_at:
                self.cond.notify_all()
        if dropped and self.dropped == 1:
            self._on_first_drop()

    def take(self, limit: int) -> tuple[list[Record], int]:
        """Up to `limit` oldest records, and the drops to report with them."""
        with self.cond:
            records = [self._records.popleft() for _ in range(min(limit, len(self._records)))]
            dropped, self._unreported = self._unreported, 0
            return records, dropped

    def lost(self, records: int, unreported: int) -> None:
        """A batch the service refused: its records count as dropped in the next batch."""
        with self.cond:
            self.dropped += records
            self._unreported += records + unreported
