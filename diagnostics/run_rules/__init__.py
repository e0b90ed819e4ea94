"""The run (streaming) rules: diagnose a training run incrementally from its gradient-log chunks.

The evaluator loads on first use, so `gradhealth.diagnostics.run_rules.metrics` stays a light import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .metrics import METRICS, GradientMetric

if TYPE_CHECKING:
    from .chunk import LogChunk
    from .evaluator import RUN_RULE_IDS, RunEvaluator
    from .protocol import RunRule

__all__ = ["METRICS", "RUN_RULE_IDS", "GradientMetric", "LogChunk", "RunEvaluator", "RunRule"]

_LAZY = {"LogChunk": "chunk", "RUN_RULE_IDS": "evaluator", "RunEvaluator": "evaluator", "RunRule": "protocol"}


def __getattr__(name: str) -> Any:
    """Load the chunk, evaluator and protocol modules when one of their names is first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
