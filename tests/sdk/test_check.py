"""`gradhealth check` as CI runs it: exit codes, JUnit and Markdown outputs, baselines."""

from __future__ import annotations

import argparse
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from gradhealth.sdk.check import EXIT_FAILED, EXIT_PASSED, EXIT_UNAVAILABLE, EXIT_USAGE, main
from gradhealth.sdk.commands import add_check_parser

import gradhealth

from .conftest import ZooFiles
from .servers import free_port

SICK, HEALTHY = "deep_sigmoid_mlp", "deep_relu_mlp_kaiming"


def _files(zoo_files: ZooFiles, name: str) -> list[str]:
    return ["--model", str(zoo_files.models[name]), "--batch", str(zoo_files.batches[name])]


def test_pathological_model_fails_with_junit_and_markdown(
    zoo_files: ZooFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junit, markdown, report = tmp_path / "out" / "junit.xml", tmp_path / "summary.md", tmp_path / "report.json"
    code = main(
        [
            *_files(zoo_files, SICK),
            "--fail-on",
            "error",
            "--junit",
            str(junit),
            "--markdown",
            str(markdown),
            "--json",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert code == EXIT_FAILED and "FAILED: 1 finding(s) at or above 'error'" in out and "vanishing_gradient" in out
    root = ET.parse(junit).getroot()
    failed = [case.get("name") for case in root.iter("testcase") if case.find("failure") is not None]
    assert failed == ["vanishing_gradient"] and root.get("failures") == "1"
    failure = next(c for c in root.iter("testcase") if c.get("name") == "vanishing_gradient").find("failure")
    assert failure is not None and "Fix:" in (failure.text or "")
    text = markdown.read_text()
    assert text.startswith("# gradhealth report") and "vanishing_gradient" in text and "**FAILED" in text
    assert gradhealth.Report.load(report).findings_for("vanishing_gradient")


def test_healthy_model_passes(zoo_files: ZooFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "junit.xml"
    code = main([*_files(zoo_files, HEALTHY), "--fail-on", "warning", "--junit", str(junit), "--quiet"])
    assert code == EXIT_PASSED
    assert capsys.readouterr().out.strip() == "PASSED: no findings at or above 'warning'"
    assert ET.parse(junit).getroot().get("failures") == "0"


def test_fail_on_critical_lets_errors_through(zoo_files: ZooFiles) -> None:
    assert main([*_files(zoo_files, SICK), "--fail-on", "critical", "--quiet"]) == EXIT_PASSED


def test_regression_against_a_baseline_fails(
    zoo_files: ZooFiles, reports: dict[str, gradhealth.Report], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = reports[HEALTHY].save(tmp_path / "baseline.json")
    junit, markdown = tmp_path / "junit.xml", tmp_path / "summary.md"
    # The sick model passes --fail-on critical on its own, but it is a regression against the healthy baseline.
    code = main(
        [
            *_files(zoo_files, SICK),
            "--fail-on",
            "critical",
            "--baseline",
            str(baseline),
            "--junit",
            str(junit),
            "--markdown",
            str(markdown),
        ]
    )
    out = capsys.readouterr().out
    assert code == EXIT_FAILED and "regression against the baseline" in out
    case = next(c for c in ET.parse(junit).getroot().iter("testcase") if c.get("name") == "baseline_regression")
    assert case.find("failure") is not None
    assert "Compared with baseline" in markdown.read_text()
    same = reports[SICK].save(tmp_path / "same.json")
    assert main([*_files(zoo_files, SICK), "--fail-on", "critical", "--baseline", str(same), "--quiet"]) == EXIT_PASSED


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--lr", "0.1"], "--lr needs --optimizer"),
        (["--optimizer", "sgd"], "--optimizer needs --lr"),
        (["--checks", "standard,everything"], "checks"),
        (["--loss", "hinge"], "unknown loss"),
        (["--baseline", "not-a-file-or-id"], "an analysis id needs --server"),
    ],
)
def test_usage_errors_exit_2(
    zoo_files: ZooFiles, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_files(zoo_files, HEALTHY), *extra]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_and_bad_files_exit_2(zoo_files: ZooFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", str(tmp_path / "nope.pt2"), "--batch", str(zoo_files.batches[SICK])]) == EXIT_USAGE
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "baseline.json"
    bad.write_text("{not json")
    assert main([*_files(zoo_files, SICK), "--baseline", str(bad)]) == EXIT_USAGE
    assert "not a gradhealth report" in capsys.readouterr().err
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(zoo_files.models[SICK].read_bytes()[:400])
    assert main(["--model", str(broken), "--batch", str(zoo_files.batches[SICK])]) == EXIT_USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_unreachable_server_exits_3(zoo_files: ZooFiles, capsys: pytest.CaptureFixture[str]) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    assert main([*_files(zoo_files, HEALTHY), "--server", server, "--api-key", "k", "--quiet"]) == EXIT_UNAVAILABLE
    assert "unreachable" in capsys.readouterr().err


def test_registers_as_a_subcommand() -> None:
    parser = argparse.ArgumentParser(prog="gradhealth")
    add_check_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["check", "--model", "m.pt2", "--batch", "b.safetensors", "--fail-on", "warning"])
    assert args.handler.__name__ == "run_check" and args.fail_on == "warning" and args.server is None


def test_real_process_exit_codes(zoo_files: ZooFiles) -> None:
    """As a CI step runs it: `gradhealth check` (or the module, until the CLI registers the command)."""
    from gradhealth.cli import build_parser

    registered = "check" in build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    command = ["-m", "gradhealth.cli", "check"] if registered else ["-m", "gradhealth.sdk.check"]
    done = subprocess.run(
        [sys.executable, *command, *_files(zoo_files, SICK)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == EXIT_FAILED, done.stderr
    usage = subprocess.run([sys.executable, *command, "--model", "x.pt2"], capture_output=True, text=True, timeout=300)
    assert usage.returncode == EXIT_USAGE and "--batch" in usage.stderr and "Traceback" not in usage.stderr
