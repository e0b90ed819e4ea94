"""`gradhealth check`: gate a CI pipeline on a model's gradient health, locally or against a server.

Exit codes: 0 passed; 1 findings at or above --fail-on, or a regression against --baseline;
2 usage or input error; 3 service unreachable, analysis failed or timed out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .commands import add_analysis_arguments

if TYPE_CHECKING:  # loaded when a check runs, not when `gradhealth --version` builds the parser
    from gradhealth.diagnostics import AnalysisOptions
    from gradhealth.report import Comparison

    from .client import Client
    from .report import Report

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
LEVELS = ("info", "warning", "error", "critical")


class CheckError(Exception):
    """A failure with a message for the user and the exit code it maps to."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def configure_parser(p: argparse.ArgumentParser) -> None:
    """The check command's arguments (shared by `gradhealth check` and `python -m gradhealth.sdk.check`)."""
    add_analysis_arguments(p)
    p.add_argument("--server", help="gradhealth service URL; without it the engine runs here (no server needed)")
    p.add_argument("--api-key", help="API key for --server (default $GRADHEALTH_API_KEY)")
    p.add_argument("--device", help="local runs only: cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument(
        "--fail-on", choices=LEVELS[1:], default="error", help="fail at this severity or worse (default error)"
    )
    p.add_argument("--baseline", help="earlier report: a JSON file (from --json) or, with --server, an analysis id")
    p.add_argument("--junit", type=Path, help="write JUnit XML here (one testcase per rule)")
    p.add_argument("--markdown", type=Path, help="write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)")
    p.add_argument("--json", type=Path, help="write the report JSON here (use it as a later --baseline)")
    p.add_argument("--html", type=Path, help="write the self-contained HTML report here")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for a server analysis (default 1800)")
    p.add_argument("--quiet", action="store_true", help="print only the verdict line")


def add_check_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `gradhealth check`."""
    p = subparsers.add_parser(
        "check",
        help="fail a CI job when a model's gradient health is bad or regressed",
        description=__doc__.split("\n", 1)[0]
        + " Exit 0 passed, 1 failed, 2 usage/input error, 3 service/analysis error.",
    )
    configure_parser(p)
    p.set_defaults(handler=run_check)


def _options(args: argparse.Namespace) -> AnalysisOptions:
    from pydantic import ValidationError

    from .commands import _options as analysis_options
    from .commands import missing_input

    problem = missing_input(args)
    if problem:
        raise CheckError(problem, EXIT_USAGE)
    try:
        return analysis_options(args)
    except (ValueError, ValidationError) as exc:
        raise CheckError(str(exc), EXIT_USAGE) from None


def _client(args: argparse.Namespace) -> Client:
    from .client import Client

    return Client(base_url=args.server, api_key=args.api_key)


def _api_failure(exc: Exception, server: str) -> CheckError:
    """Map SDK errors to exit codes: the caller's fault is 2, the service's or the analysis's is 3."""
    from . import errors

    if isinstance(exc, errors.AuthenticationError | errors.PermissionDeniedError):
        return CheckError(f"{exc.message} (server {server}; pass --api-key or set GRADHEALTH_API_KEY)", EXIT_USAGE)
    if isinstance(
        exc,
        errors.BadRequestError | errors.UnprocessableEntityError | errors.PayloadTooLargeError | errors.NotFoundError,
    ):
        return CheckError(exc.message, EXIT_USAGE)
    if isinstance(exc, errors.APIConnectionError):
        return CheckError(f"gradhealth service unreachable: {exc}", EXIT_UNAVAILABLE)
    return CheckError(str(exc), EXIT_UNAVAILABLE)


def _load_baseline(args: argparse.Namespace) -> Report | None:
    from pydantic import ValidationError

    from .errors import APIError, ConflictError
    from .report import Report

    if not args.baseline:
        return None
    path = Path(args.baseline)
    if path.is_file():
        try:
            return Report.load(path)
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise CheckError(f"--baseline {path}: not a gradhealth report JSON ({first})", EXIT_USAGE) from None
    if not args.server:
        raise CheckError(f"--baseline {args.baseline}: no such file (an analysis id needs --server)", EXIT_USAGE)
    try:
        with _client(args) as client:
            return client.analyses.report(args.baseline)
    except ConflictError as exc:
        raise CheckError(f"--baseline {args.baseline}: {exc.message}", EXIT_USAGE) from None
    except APIError as exc:
        raise _api_failure(exc, args.server) from None


def _analyze(args: argparse.Namespace) -> Report:
    from .report import Report

    options = _options(args)
    if not args.server:
        from gradhealth.diagnostics import InputError, analyze_files

        try:
            return Report.from_engine(analyze_files(args.model, args.batch, options))
        except InputError as exc:
            raise CheckError(str(exc), EXIT_USAGE) from None
        except Exception as exc:  # the engine itself broke: not the user's input
            raise CheckError(f"analysis failed: {type(exc).__name__}: {exc}", EXIT_UNAVAILABLE) from None
    from .errors import GradhealthError

    if args.device:
        print("gradhealth: note: --device applies to local runs; the server chooses its own device", file=sys.stderr)
    try:
        with _client(args) as client:
            return client.analyze(
                args.model,
                batches=args.batch,
                loss=options.loss,
                optimizer=options.optimizer,
                precision=options.precision,
                checks=options.checks,
                check_settings=options.model_dump(include={"top_eigenvalues", "trace_probes", "verify_steps"}),
                progress=not args.quiet,
                timeout=args.timeout,
            )
    except GradhealthError as exc:
        raise _api_failure(exc, args.server) from None


def _write(path: Path | None, text: str) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise CheckError(f"cannot write {path}: {exc}", EXIT_USAGE) from None


def _summary(report: Report, fail_on: str, comparison: Comparison | None, quiet: bool) -> tuple[bool, list[str]]:
    bad = report.findings_at_least(fail_on)  # type: ignore[arg-type]
    failed = bool(bad) or bool(comparison and comparison.regressed)
    lines = [] if quiet else [f"gradhealth: {report.health}: {report.summary}"]
    if not quiet:
        for f in report.findings:
            mark = "✗" if f in bad else "·"
            layers = f" [{', '.join(f.layers[:4])}{', …' if len(f.layers) > 4 else ''}]" if f.layers else ""
            lines.append(f"  {mark} {f.severity:<8} {f.rule}: {f.title}{layers}")
        if comparison is not None:
            lines += [
                f"  baseline {comparison.baseline_id}: " + ("regressed" if comparison.regressed else "no regression")
            ]
            lines += [f"    - {reason}" for reason in comparison.reasons]
    why = []
    if bad:
        why.append(f"{len(bad)} finding(s) at or above {fail_on!r}")
    if comparison and comparison.regressed:
        why.append("regression against the baseline")
    lines.append(
        ("FAILED: " + " and ".join(why))
        if failed
        else f"PASSED: no findings at or above {fail_on!r}"
        + (", no regression against the baseline" if comparison else "")
    )
    return failed, lines


def _check(args: argparse.Namespace) -> int:
    baseline = _load_baseline(args)
    report = _analyze(args)
    comparison = report.compare(baseline) if baseline is not None else None
    failed, lines = _summary(report, args.fail_on, comparison, args.quiet)
    _write(args.json, report.model_dump_json(indent=2) + "\n")
    _write(args.junit, report.to_junit(args.fail_on, comparison))
    _write(args.html, report.to_html())
    markdown = report.to_markdown() + ("\n" + comparison.to_markdown() if comparison else "")
    _write(args.markdown, markdown + f"\n**{lines[-1]}**\n")
    print("\n".join(lines))
    return EXIT_FAILED if failed else EXIT_PASSED


def run_check(args: argparse.Namespace) -> int:
    """Run the check; every expected failure becomes a one-line message and its exit code, never a traceback."""
    try:
        return _check(args)
    except CheckError as exc:
        print(f"gradhealth: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("gradhealth: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gradhealth.sdk.check ...`: the same command without the full CLI."""
    parser = argparse.ArgumentParser(prog="gradhealth check", description=__doc__.split("\n", 1)[0])
    configure_parser(parser)
    return run_check(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
