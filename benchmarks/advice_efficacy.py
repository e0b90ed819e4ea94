"""Advice efficacy over the zoo: is each pathology's top remediation verified, and does it train like a healthy model?

For every pathological zoo case (tests/zoo.py) the analysis runs with `checks=(..., "verify")` under the
case's own optimizer and precision. The *top remediation* is the first remediation of the report's first
finding at warning or above (the root cause ranks first, unless verify measured every remedy it offers
not to help; verify puts the remedy reaching the lowest loss first).
It **works** when its verification is `verified` and its trial trains like the healthy control: relative
loss decrease `d = 1 - L_K/L_0` within 2x of the control's (`d >= d_ctrl - |d_ctrl|/2`), and no NaN.

The control of an architecture (mlp, cnn, rnn, lstm, transformer) is the median relative loss decrease of
that architecture's healthy zoo cases, each trained K steps by the same trial code from its own parameters
under its own zoo optimizer (the set-up it is healthy in), or the verify default (SGD lr 0.01, momentum
0.9) when it has none. fp16 underflow's control is its own twin: the same model trained in fp32. Healthy
cases are also analysed with verify: they must run no trial.

Cost: each remediation's own trial (its K optimizer steps, the final loss and the re-measure after them),
timed by verify itself (`verification.remediated.seconds`), in multiples of one plain forward+backward of
the same exported model on the same batch (median of 15, before and after the analyses, averaged),
against the budget 2 x K. Every remediation trial of the report counts, not only the top one's; a trial
that stops at its first non-finite step costs what it ran. Each case is analysed --repeats times (default
3; the trials are deterministic) and each trial's cost is its median over them, as the unit is a median:
one pre-emption by another process on a shared machine would otherwise set the maximum. On a busy
machine `--clock cpu` times everything (the trials' seconds and the unit) in this process's CPU time: with
one torch thread that is the work's own time, whatever else runs. The baseline trial (the model as uploaded) is
run once per analysis and shared by every remediation; its own cost is printed apart, for information:
with a single remediation, counting it too makes two K-step trials, 2K even at zero overhead, so the
issue's per-remediation budget can only mean the remediation's own trial.

    python benchmarks/advice_efficacy.py [--steps 30] [--repeats 3] [--clock wall|cpu] [--cases name,name]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from gradhealth.diagnostics import AnalysisOptions, Analyzer
from gradhealth.diagnostics.export import PackageMetadata, export_per_sample_loss
from gradhealth.diagnostics.loading import from_exported_program
from gradhealth.diagnostics.options import OptimizerSpec
from gradhealth.diagnostics.remedies import TrialSetup
from gradhealth.diagnostics.verify import DEFAULT_OPTIMIZER
from gradhealth.diagnostics.verify_trial import run_trial
from gradhealth.report import Report
from gradhealth.report.schema import severity_at_least

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.zoo import HEALTHY, PATHOLOGICAL, ZooCase  # noqa: E402, I001


# Pathologies no parameter change can fix (an unused branch, a NaN made by an op, batch size, a noisy input):
# their advice is structural by nature and marked not_applicable; the target set is the rest.
STRUCTURAL_ONLY = (
    "mlp_unused_aux_head",
    "cnn_unused_aux_classifier",
    "transformer_unused_pooler",
    "mlp_nan_log_negative",
    "transformer_all_padding_nan",
    "linear_regression_batch_wasteful",
    "mlp_noise_branch",
)


def analyzer_for(case: ZooCase) -> tuple[Analyzer, tuple[torch.Tensor, ...], torch.Tensor]:
    """The case exported exactly as gradhealth.package() would, ready to analyse."""
    model, loss, inputs, targets = case.build()
    ep = export_per_sample_loss(model, loss, inputs, targets)
    meta = PackageMetadata(returns_loss=True, num_inputs=len(inputs), loss=str(loss))
    return Analyzer(from_exported_program(ep, meta, None)), inputs, targets


def fwd_bwd_seconds(analyzer: Analyzer, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor) -> float:
    """Median wall time of one plain forward+backward of the exported model (probes off), as trials run it."""
    if analyzer.graph is not None:
        analyzer.graph.recorder.enabled = False
    times = []
    for _ in range(15):
        start = time.perf_counter()
        analyzer.loaded.per_sample_loss(inputs, targets).float().mean().backward()
        times.append(time.perf_counter() - start)
    for p in analyzer.loaded.module.parameters():
        p.grad = None
    if analyzer.graph is not None:
        analyzer.graph.recorder.enabled = True
    return statistics.median(times)


def control_decrease(case: ZooCase, spec: OptimizerSpec, steps: int, precision: str | None = None) -> float | None:
    """The healthy control's relative loss decrease over K trial steps."""
    analyzer, inputs, targets = analyzer_for(case)
    if analyzer.graph is not None:
        analyzer.graph.recorder.enabled = False
    params = {analyzer.loaded.display_name(n): p for n, p in analyzer.loaded.module.named_parameters()}
    setup = TrialSetup(params, tuple(t.detach() for t in inputs), targets, spec.lr, set(params))
    torch.manual_seed(0)
    return run_trial(analyzer.loaded, setup, spec, steps, precision or case.precision).relative_decrease


def large_cost(steps: int) -> None:
    """Trial cost where compute dominates: an 8 x 1024 ReLU MLP, batch 256, 3/4 of its units held dead by biases."""
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(512, 1024), torch.nn.ReLU()]
    for _ in range(7):
        layers += [torch.nn.Linear(1024, 1024), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(1024, 10))
    with torch.no_grad():
        for layer in model[:4:2]:
            layer.bias[:768] = -6.0  # type: ignore[index]
    x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))
    ep = export_per_sample_loss(model, "cross_entropy", (x,), y)
    analyzer = Analyzer(from_exported_program(ep, PackageMetadata(True, 1, "cross_entropy"), None))
    before = fwd_bwd_seconds(analyzer, (x,), y)
    report = analyzer.run((x,), y, AnalysisOptions(checks=("standard", "verify"), verify_steps=steps))
    unit = (before + fwd_bwd_seconds(analyzer, (x,), y)) / 2
    own, base = trial_costs([report], unit)
    statuses = [
        (f.rule, r.action, r.verification.status) for f in report.findings for r in f.remediation if r.verification
    ]
    worst = max(own) if own else None
    print(
        f"large model (8x1024 MLP, batch 256, one fwd+bwd {unit * 1000:.1f} ms): {len(own)} remediation trials, "
        f"each {_fmt(min(own) if own else None)}-{_fmt(worst)}x fwd+bwd (K={steps}, budget {2 * steps}x: "
        f"{'PASS' if worst is not None and worst <= 2 * steps else 'FAIL'}); the shared baseline {_fmt(base)}x; "
        f"{statuses[:2]}"
    )


def trial_costs(reports: list[Report], unit: float) -> tuple[list[float], float | None]:
    """Each remediation trial's own cost in fwd+bwd units (one per trial run), and the baseline trial's.

    The reports are repeated analyses of one case (the same trials, deterministic): each trial's cost is
    its median over them, as the unit is a median, so one pre-emption on a shared machine does not count.
    """
    own: dict[tuple[int, int], list[float]] = {}
    base: list[float] = []
    for report in reports:
        seen_base = False
        for i, finding in enumerate(report.findings):
            for j, remediation in enumerate(finding.remediation):
                v = remediation.verification
                if v is None or v.remediated is None or v.remediated.seconds is None:
                    continue
                own.setdefault((i, j), []).append(v.remediated.seconds)
                if not seen_base and v.baseline is not None and v.baseline.seconds is not None:
                    base.append(v.baseline.seconds)
                    seen_base = True
    trials: dict[float, tuple[int, int]] = {}
    for key, seconds in own.items():
        trials.setdefault(seconds[0], key)  # remediations sharing one trial carry the same seconds: count it once
    costs = [statistics.median(own[key]) / unit for key in trials.values()]
    return costs, statistics.median(base) / unit if base else None


def healthy_controls(steps: int) -> dict[str, float]:
    """Per architecture, the median relative loss decrease of its healthy zoo cases over K trial steps."""
    by_arch: dict[str, list[float]] = {}
    for case in HEALTHY:
        spec = OptimizerSpec.model_validate(case.optimizer) if case.optimizer else DEFAULT_OPTIMIZER
        decrease = control_decrease(case, spec, steps)
        by_arch.setdefault(case.arch, []).append(decrease if decrease is not None else 0.0)
    return {arch: statistics.median(values) for arch, values in by_arch.items()}


def top_remediation(report: Report) -> tuple[str, str, object] | None:
    """(rule, action, verification) of the first finding at warning or above, first remediation."""
    for finding in report.findings:
        if severity_at_least(finding.severity, "warning") and finding.remediation:
            fix = finding.remediation[0]
            return finding.rule, fix.action, fix.verification
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cases", default="", help="comma-separated zoo case names (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="analyses per case; trial costs are their median")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: this process's CPU time")
    args = parser.parse_args()
    if args.clock == "cpu":  # verify's trial seconds and the unit alike: other processes' pre-emption does not count
        time.perf_counter = time.process_time
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    wanted = {c for c in args.cases.split(",") if c}
    print(
        f"load average at start: {os.getloadavg()}; torch threads {torch.get_num_threads()}; K={args.steps}; "
        f"clock {args.clock}; {args.repeats} analyses per case"
    )
    controls = healthy_controls(args.steps)
    print(
        "controls (median relative decrease of the healthy cases per arch):",
        {k: round(v, 3) for k, v in controls.items()},
    )
    rows, works, applicable = [], 0, 0
    costs: list[float] = []
    base_costs: list[float] = []
    in_scope = works_in_scope = 0
    header = f"{'case':36} {'top finding':22} {'top remedy':28} {'status':14} {'d_base':>7} {'d_rem':>7} {'d_ctrl':>7}"
    print(header + f" {'works':>5} {'max x fwd+bwd':>14}")
    for case in PATHOLOGICAL:
        if wanted and case.name not in wanted:
            continue
        analyzer, inputs, targets = analyzer_for(case)
        before = fwd_bwd_seconds(analyzer, inputs, targets)
        options = AnalysisOptions(
            optimizer=case.optimizer,
            precision=case.precision,
            checks=(*case.checks, "verify"),
            verify_steps=args.steps,
        )
        reports = [analyzer.run(inputs, targets, options) for _ in range(args.repeats)]
        report = reports[0]
        unit = (before + fwd_bwd_seconds(analyzer, inputs, targets)) / 2  # interleaved: load drifts
        top = top_remediation(report)
        own, base = trial_costs(reports, unit)
        cost = max(own) if own else None
        costs.extend(own)
        base_costs.extend([base] if base is not None else [])
        in_scope += case.name not in STRUCTURAL_ONLY
        if top is None:
            rows.append(f"{case.name:36} {'(none >= warning)':22}")
            continue
        rule, action, v = top
        status = getattr(v, "status", "none")
        d_base = d_rem = d_ctrl = None
        ok = False
        if status in ("verified", "not_improved"):
            applicable += 1
            base, rem = v.baseline, v.remediated  # type: ignore[union-attr]
            d_base = _decrease(base.loss) if base.non_finite_steps == 0 else None
            d_rem = _decrease(rem.loss) if rem.non_finite_steps == 0 else None
            d_ctrl = controls.get(case.arch)
            if rule == "fp16_underflow":  # its healthy twin is the same model trained in fp32
                spec = OptimizerSpec.model_validate(case.optimizer) if case.optimizer else DEFAULT_OPTIMIZER
                d_ctrl = control_decrease(case, spec, args.steps, precision="fp32")
            ok = status == "verified" and d_rem is not None and d_ctrl is not None and d_rem >= d_ctrl - abs(d_ctrl) / 2
        works += ok
        works_in_scope += ok and case.name not in STRUCTURAL_ONLY
        rows.append(
            f"{case.name:36} {rule:22} {action:28} {status:14} {_fmt(d_base):>7} {_fmt(d_rem):>7} {_fmt(d_ctrl):>7} "
            f"{'yes' if ok else 'no':>5} {_fmt(cost):>14}"
        )
        print(rows[-1], flush=True)
    healthy_trials = []
    for case in HEALTHY:
        if wanted and case.name not in wanted:
            continue
        analyzer, inputs, targets = analyzer_for(case)
        options = AnalysisOptions(
            optimizer=case.optimizer, precision=case.precision, checks=(*case.checks, "verify"), verify_steps=args.steps
        )
        report = analyzer.run(inputs, targets, options)
        healthy_trials.append((case.name, int(report.metrics.get("verify_trials", 0) or 0), "verify" in report.timings))
    total = len(rows)
    print()
    print(f"pathologies: {total}; top remediation machine-applicable (a trial ran): {applicable}")
    print(
        f"top remediation verified and trains like the healthy control: {works}/{total} = {works / max(total, 1):.0%}"
    )
    if applicable:
        print(f"  of those with an applicable top remediation: {works}/{applicable} = {works / applicable:.0%}")
    share = works_in_scope / max(in_scope, 1)
    print(
        f"  of the parameter-fixable pathologies (all but {len(STRUCTURAL_ONLY)} structural-only): "
        f"{works_in_scope}/{in_scope} = {share:.0%} (target >= 90%: {'PASS' if share >= 0.9 else 'FAIL'})"
    )
    if costs:
        print(
            f"trial cost per remediation ({len(costs)} remediation trials, each its own K steps, final loss and "
            f"re-measure as verify timed it): median {statistics.median(costs):.1f}x, max {max(costs):.1f}x one "
            f"fwd+bwd (budget 2K = {2 * args.steps}x): {'PASS' if max(costs) <= 2 * args.steps else 'FAIL'}"
        )
    if base_costs:
        print(
            f"  the shared baseline trial, once per analysis (information): median {statistics.median(base_costs):.1f}x,"
            f" max {max(base_costs):.1f}x"
        )
    ran = [name for name, trials, timed in healthy_trials if trials or timed]
    print(f"healthy models: {len(healthy_trials)} analysed with verify, trials run on {len(ran)} {ran or ''}")
    if not wanted:
        large_cost(args.steps)
    print(f"load average at end: {os.getloadavg()}")


def _decrease(loss: list[float | None]) -> float | None:
    first, last = (loss[0], loss[-1]) if loss else (None, None)
    return None if first is None or last is None or first <= 0 else 1 - last / first


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
