"""gradhealth: whether gradients flow well through your PyTorch model, why not, and what to change.

The SDK's names are imported on first use (PEP 562), so `import gradhealth.report` (the plain-data report
toolkit the service also uses) does not pull in the client, torch or httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "AnalysisFailedError",
    "AsyncClient",
    "Client",
    "Comparison",
    "Finding",
    "GradhealthError",
    "HealthError",
    "Report",
    "StopTraining",
    "__version__",
    "analyze",
    "package",
    "save_batch",
    "watch",
]
_SDK_NAMES = frozenset(__all__) - {"__version__", "analyze", "StopTraining"}

if TYPE_CHECKING:
    from gradhealth.actions import StopTraining
    from gradhealth.sdk import (
        AnalysisFailedError,
        APIConnectionError,
        APIError,
        APIStatusError,
        AsyncClient,
        Client,
        Comparison,
        Finding,
        GradhealthError,
        HealthError,
        Report,
        package,
        save_batch,
        watch,
    )


def __getattr__(name: str) -> Any:
    if name == "StopTraining":  # raised by gradhealth.actions.stop_training
        from gradhealth.actions import StopTraining

        return StopTraining
    if name in _SDK_NAMES:
        value = getattr(importlib.import_module("gradhealth.sdk"), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'gradhealth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def analyze(model, loss, inputs=None, targets=None, *, batches=None, **options) -> Report:  # type: ignore[no-untyped-def]
    """Analyse an in-memory model locally (no server) on (inputs, targets) or on batches=[(inputs, targets), ...].

    Several batches are each analysed and merged: estimates across_batches.<name> measure their spread.
    Options as in AnalysisOptions.
    """
    from gradhealth.diagnostics import AnalysisOptions, analyze_module
    from gradhealth.sdk import Report

    pairs = list(batches) if batches is not None else []
    if (
        (inputs is None) != (targets is None)
        or (inputs is None) == (batches is None)
        or (batches is not None and not pairs)
    ):
        raise ValueError("give inputs and targets, or batches=[(inputs, targets), ...] (at least one), not both")
    first, rest = ((inputs, targets), []) if inputs is not None else (pairs[0], pairs[1:])
    return Report.from_engine(analyze_module(model, loss, *first, AnalysisOptions(**options), more_batches=rest))
