"""The run (streaming) rules: diagnose a training run incrementally from its gradient-log chunks."""

from __future__ import annotations

from .chunk import METRICS, LogChunk
from .evaluator import RUN_RULE_IDS, RunEvaluator

__all__ = ["METRICS", "RUN_RULE_IDS", "LogChunk", "RunEvaluator"]
