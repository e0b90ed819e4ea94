"""The SDK's Report: the engine's report schema (unchanged) plus the methods people and CI need."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Literal

from gradhealth.report import SEVERITY_ORDER, Comparison, Finding, Tolerance, compare_reports, severity_at_least
from gradhealth.report import Report as EngineReport
from pydantic import ConfigDict

from .errors import HealthError

Level = Literal["info", "warning", "error", "critical"]


def _level(level: str) -> str:
    if level not in SEVERITY_ORDER:
        raise ValueError(f"unknown severity {level!r}; use one of: {', '.join(SEVERITY_ORDER)}")
    return level


class Report(EngineReport):
    """A gradient-health report (schema version 1) that renders, gates and compares itself."""

    # Methods only, no fields: the JSON schema (description included) stays the engine's.
    model_config = ConfigDict(json_schema_extra={"description": inspect.cleandoc(EngineReport.__doc__ or "")})

    def __repr__(self) -> str:
        rules = ", ".join(f"{f.severity}:{f.rule}" for f in self.findings)
        return f"Report(id={self.id!r}, health={self.health!r}, findings=[{rules}])"

    @classmethod
    def from_engine(cls, report: EngineReport) -> Report:
        """Wrap a report returned by the engine (gradhealth.diagnostics) in the SDK class."""
        if isinstance(report, cls):
            return report
        return cls.model_validate(report.model_dump())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Report:
        """Read a report saved as JSON (e.g. `gradhealth check --json`, or `report.save()`)."""
        return cls.model_validate_json(Path(path).read_bytes())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as indented JSON; `Report.load` reads it back."""
        target = Path(path)
        target.write_text(self.model_dump_json(indent=2) + "\n")
        return target

    def findings_at_least(self, level: Level) -> list[Finding]:
        """Findings whose severity is `level` or worse."""
        return [f for f in self.findings if severity_at_least(f.severity, _level(level))]

    def raise_for_health(self, level: Level = "error") -> Report:
        """Raise HealthError listing the findings at or above `level`; return self when there are none."""
        bad = self.findings_at_least(level)
        if bad:
            raise HealthError(level, bad, self.id)
        return self

    def to_markdown(self) -> str:
        """Markdown for terminals and CI summaries."""
        from gradhealth.report import to_markdown

        return to_markdown(self)

    def to_html(self) -> str:
        """A self-contained HTML page with the gradient-flow and activation-health charts."""
        from gradhealth.report import to_html

        return to_html(self)

    def _repr_html_(self) -> str:
        """Jupyter shows the report itself, with CSS scoped so the notebook's styles are untouched."""
        from gradhealth.report import to_html_fragment

        return to_html_fragment(self)

    def to_junit(self, fail_on: Level = "warning", comparison: Comparison | None = None) -> str:
        """JUnit XML: one testcase per rule, failing at `fail_on` or worse (plus the baseline check)."""
        from gradhealth.report import to_junit

        return to_junit(self, _level(fail_on), comparison)

    def compare(self, baseline: EngineReport, tolerance: Tolerance | None = None) -> Comparison:
        """What changed since `baseline` (an earlier report): new, resolved, changed findings and layer shifts."""
        return compare_reports(self, baseline, tolerance)
