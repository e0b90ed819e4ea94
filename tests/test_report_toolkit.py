"""The report toolkit (gradhealth.report) stays plain data, and the server reaches reports only through it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER_DIRS = ("api", "workers", "store")
HEAVY = ("torch", "httpx", "sqlalchemy", "fastapi")

_PROBE = """
import importlib, json, pkgutil, sys
import gradhealth.report as report
names = ["gradhealth.report"] + ["gradhealth.report." + m.name for m in pkgutil.iter_modules(report.__path__)]
for name in names:
    importlib.import_module(name)
ours = sorted(m for m in sys.modules if m.startswith("gradhealth") and m != "gradhealth" and not m.startswith("gradhealth.report"))
print(json.dumps({"modules": names, "heavy": [m for m in sys.argv[1:] if m in sys.modules], "ours": ours}))
"""


def test_report_toolkit_imports_no_torch_http_or_database() -> None:
    """In a fresh interpreter: every module of gradhealth.report loads without torch, httpx, SQLAlchemy,
    FastAPI, or any other package of ours (the SDK, the engine)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *HEAVY], capture_output=True, text=True, timeout=120, check=True
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"gradhealth.report.schema", "gradhealth.report.compare", "gradhealth.report.html_parts"} <= set(
        seen["modules"]
    )
    assert seen["heavy"] == []
    assert seen["ours"] == []


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) for each import in a file; relative imports resolve to 'gradhealth.<pkg>...'."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = ["gradhealth", *path.relative_to(ROOT).parent.parts]
                parts = parts[: len(parts) - (node.level - 1)]
                module = ".".join([*parts, module] if module else parts)
            found.append((module, [alias.name for alias in node.names]))
    return found


def _python_files(folder: str) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, folder
    return files


@pytest.mark.parametrize("folder", SERVER_DIRS)
def test_server_never_imports_the_sdk(folder: str) -> None:
    """api/, workers/ and store/ read and render reports through gradhealth.report, never gradhealth.sdk
    (nor the SDK names that the top-level `gradhealth` package re-exports)."""
    import gradhealth

    sdk_names = set(gradhealth.__all__) - {"__version__"}
    bad = []
    for path in _python_files(folder):
        for module, names in _imports(path):
            if module == "gradhealth.sdk" or module.startswith("gradhealth.sdk."):
                bad.append(f"{path.relative_to(ROOT)}: {module}")
            elif module == "gradhealth" and sdk_names & set(names):
                bad.append(f"{path.relative_to(ROOT)}: from gradhealth import {sorted(sdk_names & set(names))}")
    assert bad == []


def test_report_toolkit_imports_nothing_of_ours() -> None:
    bad = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _python_files("report")
        for module, _ in _imports(path)
        if (module == "gradhealth" or module.startswith("gradhealth.")) and not module.startswith("gradhealth.report")
    ]
    assert bad == []


def test_rule_vocabulary_matches_the_engine_registries() -> None:
    """The toolkit's rule ids (JUnit lists every known rule) are the engine's, in the same order."""
    from gradhealth.diagnostics.rules import RULE_IDS
    from gradhealth.diagnostics.run_rules import RUN_RULE_IDS
    from gradhealth.report import CHECKPOINT_RULE_IDS
    from gradhealth.report import RUN_RULE_IDS as REPORT_RUN_RULE_IDS

    assert CHECKPOINT_RULE_IDS == RULE_IDS
    assert REPORT_RUN_RULE_IDS == RUN_RULE_IDS


def test_health_order_is_the_severity_order() -> None:
    from gradhealth.report import HEALTH_ORDER, SEVERITY_ORDER, Finding, health_of

    assert list(HEALTH_ORDER.values()) == list(SEVERITY_ORDER.values())
    assert list(HEALTH_ORDER) == ["healthy", "warning", "error", "critical"]

    def finding(severity: str) -> Finding:
        return Finding(rule="r", severity=severity, title="t", message="m", confidence=1.0)  # type: ignore[arg-type]

    assert health_of([]) == "healthy"
    assert health_of([finding("info")]) == "healthy"
    assert health_of([finding("info"), finding("error"), finding("warning")]) == "error"


def test_sdk_keeps_its_public_names() -> None:
    """User code keeps working: the SDK re-exports the toolkit's classes, not copies of them."""
    import gradhealth.report as report
    import gradhealth.sdk as sdk

    import gradhealth
    from gradhealth import Comparison, Finding, Report

    assert Comparison is sdk.Comparison is report.Comparison
    assert Finding is sdk.Finding is report.Finding
    assert sdk.Tolerance is report.Tolerance
    assert Report is sdk.Report and issubclass(Report, report.Report)
    assert set(gradhealth.__all__) <= set(dir(gradhealth))
