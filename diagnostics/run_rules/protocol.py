"""RunRule: what the evaluator needs from a run rule, and nothing more."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from gradhealth.report import Finding

from .chunk import ChunkView
from .common import RunContext

# Run-level numbers a rule publishes for the report's metrics and for the other rules (through RunContext)
RuleSummary = dict[str, float | int | None]


class RunRule(Protocol):
    """One streaming rule: built from its JSON state (None for a new run), fed each chunk once, asked for verdicts.

    A rule reads only its own state and what the evaluator hands it: the chunk view (the shared per-chunk
    arrays), and the run context (run-level facts, including what other rules published in summary()).
    """

    rule_id: ClassVar[str]

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None: ...

    def update(self, v: ChunkView) -> None:
        """Advance by the chunk's new rows; the same result however the stream is chunked."""
        ...

    def findings(self, ctx: RunContext) -> list[Finding]:
        """Current verdicts."""
        ...

    def summary(self) -> RuleSummary:
        """The run-level numbers this rule keeps (may be empty)."""
        ...

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state; the rule rebuilt from it continues exactly."""
        ...
