"""JUnit XML for CI: one testcase per rule id, failures at or above a severity, and the baseline check."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from .render import estimate_items, interval_text, step_range
from .render import format_number as _num
from .schema import CHECKPOINT_RULE_IDS, RUN_RULE_IDS, Finding, Report, severity_at_least

if TYPE_CHECKING:
    from .compare import Comparison


def _known_rules(report: Report) -> tuple[str, ...]:
    """A run is checked by the run rules, not the checkpoint ones."""
    return RUN_RULE_IDS if report.kind == "run" else CHECKPOINT_RULE_IDS


def _steps(f: Finding) -> str:
    steps = step_range(f)
    return f"\nSteps: {steps.split(' ', 1)[1]}" if steps else ""


def _finding_text(findings: list[Finding]) -> str:
    return "\n\n".join(
        f"[{f.severity}] {f.title}\n{f.message}"
        + _steps(f)
        + (f"\nLayers: {', '.join(f.layers[:12])}" if f.layers else "")
        + "".join(f"\nFix: {fix.action}: {fix.detail}" for fix in f.remediation)
        for f in findings
    )


def _properties(report: Report) -> list[ET.Element]:
    """The estimates as suite properties, so a CI dashboard keeps the numbers next to the checks; [] without."""
    if not report.estimates:
        return []
    properties = ET.Element("properties")
    for name, e in estimate_items(report):
        interval = "" if interval_text(e) == "–" else f" {interval_text(e)}"
        method = f", {e.method}" if e.method else ""
        count = f"{e.samples} sample{'' if e.samples == 1 else 's'}"
        value = f"{_num(e.value)}{interval} ({count}{method})"
        ET.SubElement(properties, "property", name=f"estimate.{name}", value=value)
    return [properties]


def to_junit(report: Report, fail_on: str = "warning", comparison: Comparison | None = None) -> str:
    """Every known rule appears, so a CI dashboard shows which checks passed, not only failures."""
    known = _known_rules(report)
    rules = list(known) + sorted({f.rule for f in report.findings} - set(known))
    failures = 0
    suite = ET.Element("testsuite", name="gradhealth", timestamp=report.created_at.isoformat())
    classname = "gradhealth.run" if report.kind == "run" else f"gradhealth.{report.model.format}"
    suite.extend(_properties(report))  # before the testcases, where the JUnit schema puts them
    for rule in rules:
        findings = report.findings_for(rule)
        case = ET.SubElement(suite, "testcase", classname=classname, name=rule)
        case.set("time", "0")
        bad = [f for f in findings if severity_at_least(f.severity, fail_on)]
        if bad:
            failures += 1
            worst = max(bad, key=lambda f: ("info", "warning", "error", "critical").index(f.severity))
            where = f" ({step_range(worst)})" if worst.step is not None else ""
            message = f"{worst.severity}: {worst.title}{where}"
            failure = ET.SubElement(case, "failure", message=message, type=worst.severity)
            failure.text = _finding_text(bad)
        elif findings:
            ET.SubElement(case, "system-out").text = _finding_text(findings)
    for skipped in report.skipped:
        case = ET.SubElement(suite, "testcase", classname=classname, name=f"check:{skipped.check}")
        case.set("time", "0")
        ET.SubElement(case, "skipped", message=skipped.reason)
    tests = len(rules) + len(report.skipped)
    if comparison is not None:
        tests += 1
        case = ET.SubElement(suite, "testcase", classname=classname, name="baseline_regression")
        case.set("time", "0")
        if comparison.regressed:
            failures += 1
            failure = ET.SubElement(
                case, "failure", message=f"regressed against baseline {comparison.baseline_id}", type="regression"
            )
            failure.text = "\n".join(comparison.reasons)
        else:
            ET.SubElement(case, "system-out").text = f"no regression against baseline {comparison.baseline_id}"
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(len(report.skipped)))
    seconds = sum(report.timings.values()) if report.timings else 0.0
    suite.set("time", f"{seconds:.3f}")
    root = ET.Element("testsuites", name=f"gradhealth report {report.id}")
    root.set("tests", str(tests))
    root.set("failures", str(failures))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
