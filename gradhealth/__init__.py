"""gradhealth: whether gradients flow well through your PyTorch model, why not, and what to change."""

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
    "__version__",
    "analyze",
    "package",
    "save_batch",
    "watch",
]


def analyze(model, loss, inputs, targets, **options) -> Report:  # type: ignore[no-untyped-def]
    """Analyse an in-memory model locally (no server): options as in AnalysisOptions."""
    from gradhealth.diagnostics import AnalysisOptions, analyze_module

    return Report.from_engine(analyze_module(model, loss, inputs, targets, AnalysisOptions(**options)))
