"""gradhealth's standard/curvature/noise/full analyses next to Cockpit and PyHessian, in one run (issue 13).

Models: the DeepOBS CIFAR-10 3c3d CNN (batch 128, 3x32x32) and the DeepOBS MNIST MLP (784-1000-500-100-10,
batch 128), at their seeded initialisation, on one random batch. Rows, each timed once per round with the
rounds interleaved (the order rotates every round) so machine noise hits every row alike:

- plain fwd+bwd: the user's eager model, forward + mean cross-entropy + backward. The baseline: every
  ratio is a row's median time over the median plain time measured in the same run.
- gradhealth standard / curvature / noise / full: Analyzer.run on the exported model with checks=(name,)
  at the default settings, and the curvature check once more with trace_probes=0 (λmax only, the quantity
  PyHessian's λmax row computes; the issue's λmax target compares these two),
  as benchmarks/engine_overhead.py runs it (statistics, rules and report included); export and
  instrumentation happen once and are printed apart. A check this engine does not know yet reads
  "not available yet". "gradhealth λmax (Lanczos, direct)" is lanczos_top_eigenvalue on the HVP
  operator alone, as the check runs it (gradient start, its residual bound LAMBDA_TOL).
- Cockpit economy / business / full: a real Cockpit step (BackPACK extensions, create_graph where a
  quantity asks, SGD step with lr=0 so the weights stay put), every quantity of the preset tracked at
  every step except Alpha, which needs a line search across real updates.
- PyHessian λmax (power iteration) and trace (Hutchinson), at their defaults, gradient pass included.
- Lanczos reference: scipy eigsh(which="LA", tol=1e-6) on a LinearOperator of HVPs (torch.autograd.grad on
  the eager model, independent of gradhealth's operator), gradient pass included.
- Exact trace: the Hessian's diagonal by BackPACK's DiagHessian, summed; the trace estimates' errors are
  against it (information: the issue sets no trace-time target).

The references run once (deterministic: fixed start vector, exact diagonal); a row whose warm-up call
takes 2 s or more keeps it as its first sample (see run_rows). λmax relative errors are against the
reference (worst over the rounds). The peers are optional: install
them with the `bench` extra as benchmarks/README.md says (never through this script); a missing one
leaves its rows "not installed", so the script runs in the plain development venv too. One torch thread.

    python benchmarks/full_vs_peers.py [--rounds 3] [--quick] [--models 3c3d,mlp]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from peers.models import MODELS
from peers.steps import (
    Step,
    Unavailable,
    Values,
    cockpit_step,
    exact_trace_step,
    plain_step,
    pyhessian_step,
    reference_step,
)

# ------------------------------------------------------------------------------------------------ rows


@dataclass
class Row:
    """One method: how to run one step of it (or why it cannot), and what it measured in each round."""

    name: str
    step: Step | None = None
    reason: str = ""  # why step is None
    repeats: int = 1  # timed calls per round (median of them): cheap rows repeat to beat timer noise
    samples: int = 0  # most rounds this row takes part in (0: all); the references are deterministic
    times: list[float] = field(default_factory=list)
    values: list[Values] = field(default_factory=list)
    error: str = ""  # a failure at run time ends the row, not the benchmark
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.step is not None and not self.error and bool(self.times)

    def median(self) -> float:
        return statistics.median(self.times)

    def value(self, key: str) -> list[float]:
        return [v[key] for v in self.values if key in v and math.isfinite(v[key])]


def _row(name: str, build: Callable[[], Step], repeats: int = 1, samples: int = 0) -> Row:
    """Build a row's step now; an import or set-up that fails leaves the row with its reason."""
    try:
        return Row(name, build(), repeats=repeats, samples=samples)
    except Unavailable as exc:
        return Row(name, reason=str(exc))
    except Exception as exc:  # a peer or an engine piece that breaks in set-up: say so, keep going
        return Row(name, reason=f"set-up failed: {type(exc).__name__}: {str(exc)[:160]}")


def _estimate(report: Any, key: str) -> float | None:
    """An estimate's value from the report (Report.estimates, else the curvature metrics); None if absent."""
    estimate = getattr(report, "estimates", {}).get(key)
    if estimate is not None:
        return float(estimate.value)
    value = getattr(report, "metrics", {}).get(key)
    return float(value) if isinstance(value, int | float) else None


class Engine:
    """One exported, instrumented model shared by the gradhealth rows (export and instrumentation timed once)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.analyzer: Any = None
        self.reason = ""
        self.export_s = self.instrument_s = math.nan
        try:
            from gradhealth.diagnostics import AnalysisOptions, Analyzer
            from gradhealth.diagnostics.export import PackageMetadata, export_per_sample_loss
            from gradhealth.diagnostics.loading import from_exported_program
        except Exception as exc:  # the engine is mid-change in this checkout
            self.reason = f"engine not importable: {type(exc).__name__}: {str(exc)[:160]}"
            return
        self.options_cls = AnalysisOptions
        start = time.perf_counter()
        ep = export_per_sample_loss(model, "cross_entropy", x, y)
        self.export_s = time.perf_counter() - start
        start = time.perf_counter()
        self.analyzer = Analyzer(from_exported_program(ep, PackageMetadata(True, 1, "cross_entropy"), None))
        self.instrument_s = time.perf_counter() - start

    def check(self, name: str, **settings: int) -> Step:
        if self.analyzer is None:
            raise Unavailable(self.reason)
        try:
            options = self.options_cls(checks=(name,), device="cpu", **settings)
        except Exception as exc:  # pydantic refuses a check name the engine does not have yet
            raise Unavailable(f"not available yet (checks=({name!r},) refused: {str(exc).splitlines()[0]})") from None

        def step() -> Values:
            report = self.analyzer.run((self.x,), self.y, options)
            values: Values = {"estimates": float(len(report.estimates))}
            for key, out in (("hessian_max_eigenvalue", "lmax"), ("hessian_trace", "trace")):
                value = _estimate(report, key)
                if value is not None:
                    values[out] = value
            trace = getattr(report, "estimates", {}).get("hessian_trace")
            if trace is not None and trace.low is not None and trace.high is not None:
                values["trace_low"], values["trace_high"] = float(trace.low), float(trace.high)
                values["trace_samples"] = float(trace.samples)
            for skipped in report.skipped:
                if skipped.check.split(".")[0] in ("noise", "curvature"):
                    values[f"skipped: {skipped.check}: {skipped.reason[:100]}"] = math.nan
            return values

        return step


def lanczos_direct_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    try:
        from gradhealth.diagnostics.curvature import lanczos_top_eigenvalue
        from gradhealth.diagnostics.curvature_stats import LAMBDA_TOL
        from gradhealth.diagnostics.hvp import hessian_operator
    except Exception as exc:
        raise Unavailable(f"not available yet: {type(exc).__name__}: {str(exc)[:160]}") from None

    def step() -> Values:
        op = hessian_operator(F.cross_entropy(model(x), y), list(model.parameters()))
        assert op is not None
        top = lanczos_top_eigenvalue(op, op.dim, op.gradient, rel_tol=LAMBDA_TOL, start=op.gradient)  # as the check
        return {"lmax": float(top.eigenvalue), "hvps": float(top.steps)}

    return step


# ------------------------------------------------------------------------------------------- running


REFERENCE = "Lanczos reference (scipy eigsh LA, tol 1e-6)"
TRACE_REFERENCE = "exact trace (BackPACK DiagHessian)"
KEEP_WARM_S = 2.0
PYHESSIAN_LMAX = "PyHessian λmax (power iteration)"
OURS_LMAX = "gradhealth curvature, λmax only"  # trace_probes=0: what PyHessian's λmax row computes
OURS_CURVATURE = "gradhealth curvature (λmax + trace)"  # the default check
PYHESSIAN_TRACE = "PyHessian trace (Hutchinson)"
OURS_FULL = "gradhealth full"
DIRECT_LMAX = "gradhealth λmax (Lanczos, direct)"
COCKPIT_FULL = "Cockpit full (no Alpha)"


def build_rows(name: str, batch: int, quick: bool) -> tuple[list[Row], Engine, int]:
    torch.manual_seed(0)
    build = MODELS[name][1]
    model, x, y = build(batch)
    model.train()
    cheap = 2 if quick else 5
    engine = Engine(copy.deepcopy(model), x, y)
    rows = [
        Row("plain fwd+bwd", plain_step(copy.deepcopy(model), x, y), repeats=cheap),
        _row("gradhealth standard", lambda: engine.check("standard"), repeats=cheap),
        _row(OURS_LMAX, lambda: engine.check("curvature", trace_probes=0)),
        _row(OURS_CURVATURE, lambda: engine.check("curvature")),
        _row("gradhealth noise", lambda: engine.check("noise")),
        _row(OURS_FULL, lambda: engine.check("full")),
        _row(DIRECT_LMAX, lambda: lanczos_direct_step(copy.deepcopy(model), x, y)),
        _row("Cockpit economy (no Alpha)", lambda: cockpit_step(model, x, y, "economy")),
        _row("Cockpit business (no Alpha)", lambda: cockpit_step(model, x, y, "business")),
        _row(COCKPIT_FULL, lambda: cockpit_step(model, x, y, "full")),
        _row(PYHESSIAN_LMAX, lambda: pyhessian_step(model, x, y, "lmax")),
        _row(PYHESSIAN_TRACE, lambda: pyhessian_step(model, x, y, "trace")),
        _row(REFERENCE, lambda: reference_step(model, x, y), samples=1),
        _row(TRACE_REFERENCE, lambda: exact_trace_step(model, x, y), samples=1),
    ]
    return rows, engine, sum(p.numel() for p in model.parameters())


def _call(row: Row) -> None:
    """Time one round of a row (median of its repeats) and keep what it measured; a failure ends the row."""
    assert row.step is not None
    times = []
    try:
        for _ in range(row.repeats):
            start = time.perf_counter()
            values = row.step()
            times.append(time.perf_counter() - start)
    except Exception as exc:
        row.error = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        return
    row.times.append(statistics.median(times))
    if values:
        row.values.append(values)


def run_rows(rows: list[Row], rounds: int) -> None:
    """A warm-up round, then interleaved rounds until every row has its samples.

    A warm-up call of KEEP_WARM_S or more counts as the row's first sample: its first-call overhead
    (allocator, lazy imports) is a few percent of it at most, and repeating the slow rows is what makes
    a full run long. Faster rows discard their warm-up call.
    """
    live = [r for r in rows if r.step is not None]
    for row in live:
        _call(row)
        if row.times and row.times[-1] < KEEP_WARM_S:
            row.times.clear()
            row.values.clear()
    for index in range(rounds):
        shift = index % len(live)
        for row in live[shift:] + live[:shift]:  # rotate the order so no row always follows the same one
            if not row.error and len(row.times) < min(rounds, row.samples or rounds):
                _call(row)


def _pct(value: float) -> str:
    return f"{100 * value:.3f}%" if value < 0.1 else f"{100 * value:.1f}%"


def report(name: str, rows: list[Row], engine: Engine, params: int, batch: int) -> dict[str, Any]:
    by_name = {r.name: r for r in rows}
    base = by_name["plain fwd+bwd"]
    plain = base.median()
    ref = by_name[REFERENCE]
    ref_values = ref.value("lmax") if ref.ok else []
    reference = ref_values[0] if ref_values else None
    exact = by_name[TRACE_REFERENCE]
    trace_ref = exact.value("trace")[0] if exact.ok and exact.value("trace") else None
    print(f"\n== {name}: {MODELS[name][0]}, {params:,} parameters, batch {batch}")
    if engine.analyzer is not None:
        print(
            f"   gradhealth export {engine.export_s:.2f} s, instrumentation {engine.instrument_s:.3f} s (once, not in rows)"
        )
    print(f"{'method':<46}{'median':>12}{'x plain':>10}{'λmax':>13}{'rel err':>10}  notes")
    errors: dict[str, float] = {}
    for row in rows:
        if not row.ok:
            print(f"{row.name:<46}{'':>12}{'':>10}{'':>13}{'':>10}  {row.error or row.reason}")
            continue
        t = row.median()
        lams = row.value("lmax")
        lam = f"{statistics.median(lams):.5g}" if lams else ""
        err = ""
        if lams and reference is not None and row is not ref:
            errors[row.name] = max(abs(v - reference) / abs(reference) for v in lams)
            err = _pct(errors[row.name])
        notes = []
        traces = row.value("trace")
        if traces:
            note = f"trace {statistics.median(traces):.5g}"
            lows, highs = row.value("trace_low"), row.value("trace_high")
            if lows and highs:
                note += f" [{min(lows):.4g}, {max(highs):.4g}] ({row.value('trace_samples')[0]:.0f} samples)"
            if trace_ref is not None and row is not by_name[TRACE_REFERENCE]:
                note += f", worst {_pct(max(abs(v - trace_ref) / abs(trace_ref) for v in traces))} off"
            notes.append(note)
        hvps = row.value("hvps")
        if hvps:
            notes.append(f"{statistics.median(hvps):.0f} HVPs")
        estimates = row.value("estimates")
        if estimates and row.name.startswith("gradhealth"):
            notes.append(f"{int(max(estimates))} estimates in the report")
        skipped = sorted({k for v in row.values for k in v if k.startswith("skipped")})
        notes += skipped
        if len(lams) > 1:
            notes.append(f"λmax range {min(lams):.5g}..{max(lams):.5g}")
        print(f"{row.name:<46}{1e3 * t:>9.1f} ms{t / plain:>9.2f}x{lam:>13}{err:>10}  {'; '.join(notes)}")
    return {"rows": by_name, "plain": plain, "errors": errors}


def verdicts(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, res in results.items():
        rows, errors = res["rows"], res["errors"]
        ours, peer = rows[OURS_LMAX], rows[PYHESSIAN_LMAX]
        target = f"{name}: λmax within 1% of reference in ≤ 1/2 of PyHessian's time"
        missing = [r.name for r in (ours, peer, rows[REFERENCE]) if not r.ok]
        if not missing and OURS_LMAX not in errors:
            missing = [f"{OURS_LMAX}'s λmax in its report"]
        if missing:
            lines.append(f"N/A   {target}: missing {', '.join(missing)}")
        else:
            share = ours.median() / peer.median()
            ok = errors[OURS_LMAX] <= 0.01 and share <= 0.5
            lines.append(
                f"{'PASS' if ok else 'FAIL'}  {target}: ours {_pct(errors[OURS_LMAX])} off in "
                f"{ours.median() / res['plain']:.2f}x plain, PyHessian {_pct(errors.get(PYHESSIAN_LMAX, math.nan))} off "
                f"in {peer.median() / res['plain']:.2f}x: ours/PyHessian = {share:.2f}"
            )
        both, trace = rows[OURS_CURVATURE], rows[PYHESSIAN_TRACE]
        if both.ok and peer.ok and trace.ok:
            lines.append(
                f"info  {name}: {OURS_CURVATURE} {both.median() / res['plain']:.2f}x plain, PyHessian λmax + trace "
                f"{(peer.median() + trace.median()) / res['plain']:.2f}x: ours/PyHessian = "
                f"{both.median() / (peer.median() + trace.median()):.2f}"
            )
        direct = rows[DIRECT_LMAX]
        if direct.ok and peer.ok and DIRECT_LMAX in errors:
            lines.append(
                f"info  {name}: {DIRECT_LMAX} alone: {_pct(errors[DIRECT_LMAX])} off in "
                f"{direct.median() / res['plain']:.2f}x plain: direct/PyHessian = {direct.median() / peer.median():.2f}"
            )
        if name != "3c3d":
            continue
        full, cockpit = rows[OURS_FULL], rows[COCKPIT_FULL]
        target = "3c3d: full ≤ 1/4 of Cockpit full's time"
        if not (full.ok and cockpit.ok):
            lines.append(f"N/A   {target}: missing {', '.join(r.name for r in (full, cockpit) if not r.ok)}")
        else:
            share = full.median() / cockpit.median()
            lines.append(
                f"{'PASS' if share <= 0.25 else 'FAIL'}  {target}: full {full.median() / res['plain']:.2f}x plain, "
                f"Cockpit full {cockpit.median() / res['plain']:.2f}x: full/Cockpit = {share:.3f}"
            )
    return lines


def _versions() -> str:
    parts = []
    for dist in ("torch", "cockpit-for-pytorch", "backpack-for-pytorch", "pyhessian", "scipy"):
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return ", ".join(parts)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" (1/5/15 min, {os.cpu_count()} CPUs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds after one warm-up round")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 16, two repeats of the cheap rows")
    parser.add_argument("--models", default="3c3d,mlp", help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--only", default="", help="comma-separated name fragments: run just those rows (and plain)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # BackPACK's module hooks fire on outputs when the input needs no gradient: expected here.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    # Cockpit and PyHessian call backward(create_graph=True) and reset .grad themselves (or we do, above).
    warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")
    batch = 16 if args.quick else 128
    print(f"load at start: {_load()}")
    print(f"{_versions()}; torch threads {torch.get_num_threads()}; rounds {args.rounds}; batch {batch}")
    results = {}
    for name in args.models.split(","):
        rows, engine, params = build_rows(name, batch, args.quick)
        if args.only:
            for row in rows[1:]:
                if not any(part.lower() in row.name.lower() for part in args.only.split(",")):
                    row.step, row.reason = None, "left out (--only)"
        run_rows(rows, args.rounds)
        results[name] = report(name, rows, engine, params, batch)
    print("\nissue 13 reference (3c3d, x plain): standard 1.21, standard+curvature 31.5, Cockpit 10.9/26.6/103,")
    print("PyHessian λmax 32.1 and trace 6.5, Lanczos reference 64\n")
    for line in verdicts(results):
        print(line)
    print(f"\nload at end: {_load()}")


if __name__ == "__main__":
    main()
