"""Which optimizer step a loss belongs to: watch.log() and the losses forward() returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ._records import LossValue, Record


def auto_loss(output: Any) -> Tensor | None:
    """A loss in a forward() result: a scalar tensor, a `.loss` attribute or a "loss" key."""
    if not isinstance(output, Tensor):
        output = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if isinstance(output, Tensor) and output.numel() == 1 and output.requires_grad:
        return output.detach()
    return None


class LossLedger:
    """Losses on their way into records; the training thread's only loss state.

    A loss logged before a step's optimizer.step() belongs to that step. One logged after it and before
    the next forward belongs to the step just taken, so that step's record stays open until then. Once
    log() is called, losses found in forward() results are ignored (the user's own are the truth).
    """

    def __init__(self) -> None:
        self.explicit = False  # log() was called: forward()'s losses no longer count
        self._open: Record | None = None  # the last step's record, still taking a late log(loss=...)
        self._last_has_loss = False
        self._upcoming: list[LossValue] = []
        self._upcoming_auto: list[LossValue] = []
        self._upcoming_has_loss = False
        self._forward_seen = False

    def log(self, loss: LossValue, step: int | None, next_step: int, recorded: bool) -> None:
        """Attach `loss` to `step` (None: the step just taken or the coming one, see the class).

        `next_step` is the coming step's number; `recorded`, whether that step will be recorded.
        """
        value = loss.detach() if isinstance(loss, Tensor) else float(loss)
        if not self.explicit:
            self.explicit = True
            self._upcoming_auto = []
        if step is None:
            to_last = next_step > 0 and not self._forward_seen and not self._last_has_loss
        else:
            to_last = step == next_step - 1
            if not to_last and step != next_step:
                return  # a step already shipped or not yet reached: nowhere to put it
        if to_last:
            self._last_has_loss = True
            if self._open is not None:
                self._open.losses.append(value)
        else:
            self._upcoming_has_loss = True
            if recorded:
                self._upcoming.append(value)

    def forward(self, output: Any, recorded: bool) -> None:
        """A training forward ran: later losses are the coming step's; keep its loss if it will be recorded."""
        self._forward_seen = True
        if not self.explicit and recorded:
            loss = auto_loss(output)
            if loss is not None:
                self._upcoming_auto.append(loss)

    def step_ended(self, record: Record | None) -> None:
        """A step ended: `record` (None: not recorded) takes the losses logged for it and stays open."""
        if record is not None:
            record.losses, record.auto_losses = self._upcoming, self._upcoming_auto
            self._open = record
        self._last_has_loss = self._upcoming_has_loss
        self._upcoming, self._upcoming_auto, self._upcoming_has_loss = [], [], False
        self._forward_seen = False

    def discard_upcoming(self) -> None:
        """The coming step was skipped (GradScaler found inf/NaN): its losses go with it."""
        self._upcoming, self._upcoming_auto = [], []

    def seal(self) -> Record | None:
        """The open record with its loss fixed, ready to ship (None when none is open)."""
        record, self._open = self._open, None
        return record.seal(self.explicit) if record is not None else None
