"""The report toolkit: the versioned report schema, comparison of two reports, and rendering for people
and CI (Markdown, HTML, JUnit). Plain data: no torch, no HTTP, no database, and nothing else of ours, so
the engine, the service and the SDK all build on it (the SDK's `gradhealth.Report` adds client methods)."""

from .compare import Comparison, FindingChange, MetricChange, Tolerance, compare_reports
from .compare_estimates import EstimateChange
from .render import format_number, to_markdown
from .render_html import to_html, to_html_fragment
from .render_junit import to_junit
from .schema import (
    CHECKPOINT_RULE_IDS,
    HEALTH_ORDER,
    RUN_RULE_IDS,
    SCHEMA_VERSION,
    SEVERITY_ORDER,
    ActivationStats,
    CurvatureSpectrum,
    Estimate,
    Finding,
    Health,
    LayerStats,
    LayerTimeline,
    ModelInfo,
    Remediation,
    Report,
    Severity,
    SkippedCheck,
    Timeline,
    health_of,
    severity_at_least,
)

__all__ = [
    "CHECKPOINT_RULE_IDS",
    "HEALTH_ORDER",
    "RUN_RULE_IDS",
    "SCHEMA_VERSION",
    "SEVERITY_ORDER",
    "ActivationStats",
    "Comparison",
    "CurvatureSpectrum",
    "Estimate",
    "EstimateChange",
    "Finding",
    "FindingChange",
    "Health",
    "LayerStats",
    "LayerTimeline",
    "MetricChange",
    "ModelInfo",
    "Remediation",
    "Report",
    "Severity",
    "SkippedCheck",
    "Timeline",
    "Tolerance",
    "compare_reports",
    "format_number",
    "health_of",
    "severity_at_least",
    "to_html",
    "to_html_fragment",
    "to_junit",
    "to_markdown",
]
