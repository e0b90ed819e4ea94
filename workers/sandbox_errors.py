"""What the sandbox parent and child share: the failure type, limits and messages."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ProgressFn = Callable[[str, float], None]
ChildTarget = Callable[[dict[str, Any], ProgressFn], dict[str, Any]]


@dataclass(frozen=True)
class Limits:
    """Per-run limits: wall clock in seconds, address space in MiB (0 = no memory limit)."""

    time_s: float
    memory_mb: int


class ChildFailure(Exception):
    """The child did not produce a result; code is stable, message tells the user what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def oom_message(payload: dict[str, Any]) -> str:
    """Say which limit was hit and which knob raises it."""
    limit = payload.get("memory_mb") or 0
    where = f"the worker's memory limit of {limit} MiB" if limit else "the available memory"
    return (
        f"the model ran out of memory ({where}); analyse a smaller batch, or raise "
        "GRADHEALTH_ANALYSIS_MEMORY_LIMIT_MB on the worker"
    )


def describe_exit(exitcode: int | None, payload: dict[str, Any]) -> ChildFailure:
    """Turn a silent child death into a message: signal name, likely cause, what to do."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.Signals._value2member_map_ else str(-exitcode)
        if -exitcode == signal.SIGKILL:
            return ChildFailure("out_of_memory", oom_message(payload) + " (the process was killed with SIGKILL)")
        return ChildFailure(
            "crashed",
            f"the analysis process crashed ({name}) while running the model; this usually means a "
            "native-code bug in an operator, or memory corruption. Try another torch version or device.",
        )
    return ChildFailure("crashed", f"the analysis process exited with code {exitcode} without a result")
