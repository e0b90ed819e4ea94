"""gradhealth: whether gradients flow well through your PyTorch model, why not, and what to change."""

from gradhealth.sdk import Finding, Report, package, save_batch

__version__ = "0.1.0"

__all__ = ["Finding", "Report", "__version__", "analyze", "package", "save_batch"]


def analyze(model, loss, inputs, targets, **options):  # type: ignore[no-untyped-def]
    """Analyse an in-memory model locally (no server): options as in AnalysisOptions."""
    from gradhealth.diagnostics import AnalysisOptions, analyze_module

    return analyze_module(model, loss, inputs, targets, AnalysisOptions(**options))
