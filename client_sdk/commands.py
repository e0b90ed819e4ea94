"""The client commands of the `gradhealth` CLI: analyze (local) and check (local or against a server)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    from gradhealth.diagnostics import AnalysisOptions
    from gradhealth.report import Report

EXIT_OK = 0
EXIT_INPUT = 2
MAX_BATCHES = 16  # as the server's bound on batch_ids


def add_check_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `gradhealth check` (its code lives in check.py and loads only when it runs)."""
    from .check import add_check_parser as register

    register(subparsers)


def add_analysis_arguments(p: argparse.ArgumentParser) -> None:
    """What to analyse and under which training set-up: shared by `analyze` and `check`."""
    p.add_argument("--model", required=True, type=Path, help="model package: .pt2 (gradhealth.package)")
    p.add_argument(
        "--batch",
        required=True,
        type=Path,
        action="append",
        help="batch: safetensors with inputs[.i] and targets; repeat (up to 16) to measure variance across batches",
    )
    p.add_argument(
        "--loss", help="named loss for plain models: cross_entropy, mse, nll, bce_with_logits, l1, smooth_l1"
    )
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="the optimizer you train with")
    p.add_argument("--lr", type=float, help="learning rate (needed with --optimizer)")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default 0)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default 0)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="training precision")
    p.add_argument(
        "--checks",
        default="standard",
        help="comma-separated: standard, noise (per-sample gradient noise), curvature, full (all three), "
        "verify (train short trials with each remediation applied, docs/verify.md)",
    )
    p.add_argument(
        "--top-eigenvalues",
        type=int,
        default=1,
        metavar="K",
        help="curvature: converge the K largest Hessian eigenvalues (residual bound 2%%; default 1; more costs products)",
    )
    p.add_argument(
        "--trace-probes",
        type=int,
        default=4,
        metavar="M",
        help="curvature: Hutch++ probes for the Hessian trace (default 4; 0 leaves the trace out)",
    )
    p.add_argument("--verify-steps", type=int, default=30, metavar="K", help="verify: steps per trial (default 30)")


def add_analyze_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `gradhealth analyze`."""
    p = subparsers.add_parser(
        "analyze",
        help="analyse a model package on a batch, locally",
        description=(
            "Run one instrumented forward+backward of MODEL on BATCH and print the gradient-health report; "
            "with several --batch, each is analysed and the report merged (estimates across_batches.*). "
            "Exit 0 when a report was produced (whatever its health), 2 for unusable input."
        ),
    )
    add_analysis_arguments(p)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--format", choices=["json", "markdown"], default="json", help="output format (default json)")
    p.add_argument("--output", type=Path, help="write the report here instead of stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument(
        "--verify-report",
        type=Path,
        metavar="REPORT.json",
        help="instead of analysing, verify this report's findings (e.g. a run report from watch()) on MODEL "
        "and BATCH, a checkpoint of that run: prints the report with each remediation's verification",
    )
    p.set_defaults(handler=run_analyze)


def missing_input(args: argparse.Namespace) -> str | None:
    """What is wrong with --model/--batch (a missing file, too many batches), or None."""
    if len(args.batch) > MAX_BATCHES:
        return f"--batch given {len(args.batch)} times; at most {MAX_BATCHES} batches"
    for label, path in (("--model", args.model), *(("--batch", b) for b in args.batch)):
        if not path.is_file():
            return f"{label} {path}: no such file"
    return None


def _fail(message: str) -> int:
    print(f"gradhealth: error: {message}", file=sys.stderr)
    return EXIT_INPUT


def _options(args: argparse.Namespace) -> AnalysisOptions:
    from gradhealth.diagnostics import AnalysisOptions, OptimizerSpec

    optimizer = None
    if args.optimizer:
        if args.lr is None:
            raise ValueError("--optimizer needs --lr")
        optimizer = OptimizerSpec(
            name=args.optimizer, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
    elif args.lr is not None:
        raise ValueError("--lr needs --optimizer (sgd, adam or adamw)")
    checks = tuple(c.strip() for c in args.checks.split(",") if c.strip())
    return AnalysisOptions(
        loss=args.loss,
        optimizer=optimizer,
        precision=args.precision,
        checks=checks,
        device=args.device,
        top_eigenvalues=args.top_eigenvalues,
        trace_probes=args.trace_probes,
        verify_steps=args.verify_steps,
    )


def _verify_report(args: argparse.Namespace, options: AnalysisOptions) -> Report:
    """`--verify-report`: the given report's findings verified on the model and the (first) batch."""
    from gradhealth.diagnostics import InputError
    from gradhealth.diagnostics.verify_engine import verify_report_files
    from gradhealth.report import Report  # noqa: F811  # the runtime import; the one above is for types

    path: Path = args.verify_report
    if not path.is_file():
        raise InputError(f"--verify-report {path}: no such file")
    try:
        given = Report.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise InputError(f"--verify-report {path} is not a gradhealth report: {str(exc)[:400]}") from None
    return verify_report_files(args.model, args.batch[0], given, options.model_copy(update={"checks": ("verify",)}))


def run_analyze(args: argparse.Namespace) -> int:
    """Load, analyse, print; map every input problem to exit code 2 with a clear message."""
    from gradhealth.diagnostics import InputError, analyze_files
    from gradhealth.report import to_markdown

    problem = missing_input(args)
    if problem:
        return _fail(problem)
    try:
        options = _options(args)
    except (ValueError, ValidationError) as exc:
        return _fail(str(exc))

    def progress(phase: str, fraction: float) -> None:
        if not args.quiet and sys.stderr.isatty():
            print(f"\r[{fraction:4.0%}] {phase:<20}", end="", file=sys.stderr, flush=True)

    try:
        if getattr(args, "verify_report", None) is not None:
            report = _verify_report(args, options)
        else:
            report = analyze_files(args.model, args.batch, options, progress=progress)
    except InputError as exc:
        return _fail(str(exc))
    if not args.quiet and sys.stderr.isatty():
        print("", file=sys.stderr)
    text = report.model_dump_json(indent=2) if args.format == "json" else to_markdown(report)
    if args.output:
        args.output.write_text(text + ("\n" if not text.endswith("\n") else ""))
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK
