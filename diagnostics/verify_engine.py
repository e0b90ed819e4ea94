"""The verify check's hook into the engine: trials with the probes off, the rules re-run after each."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from gradhealth.report import Finding, Report
from torch import Tensor

from .loading import LoadedModel
from .measurements import Measurements
from .options import AnalysisOptions, OptimizerSpec
from .rules import evaluate_rules
from .verify import Remeasured, VerifyStats, verify_findings

if TYPE_CHECKING:
    from .engine import Analyzer


def verify_analysis(
    analyzer: Analyzer,
    findings: list[Finding],
    inputs: tuple[Tensor, ...],
    targets: Tensor,
    options: AnalysisOptions,
    notify: Callable[[str, float], None],
) -> VerifyStats:
    """Verify the findings' remediations on the analyzer's model; the model is restored afterwards."""
    graph = analyzer.graph

    def remeasure(trial_inputs: tuple[Tensor, ...], trial_targets: Tensor, spec: OptimizerSpec) -> Remeasured:
        """One instrumented forward+backward and the rules, on the model as the trial left it."""
        params = dict(analyzer.loaded.module.named_parameters())
        if graph is not None and graph.has_recurrent:  # as the engine does: recurrent measures need input grads
            trial_inputs = tuple(t.detach().requires_grad_(True) if t.is_floating_point() else t for t in trial_inputs)
        if graph is not None:
            graph.recorder.reset()
            graph.recorder.enabled = True
        try:
            loss = analyzer.loaded.per_sample_loss(trial_inputs, trial_targets).float().mean()
            if loss.requires_grad:
                loss.backward()  # type: ignore[no-untyped-call]  # torch: Tensor.backward is unannotated
            trial_options = options.model_copy(update={"optimizer": spec, "checks": ("standard",)})
            batch = trial_targets.shape[0]
            m = analyzer._measure(params, trial_inputs, trial_targets, loss, batch, trial_options)
            return evaluate_rules(m), measured_metrics(m)
        finally:
            if graph is not None:
                graph.recorder.enabled = False
            for p in params.values():
                p.grad = None

    if graph is not None:
        graph.recorder.enabled = False
    try:
        return verify_findings(analyzer.loaded, findings, inputs, targets, options, remeasure, notify)
    finally:
        if graph is not None:
            graph.recorder.enabled = True


def measured_metrics(m: Measurements) -> dict[str, float | None]:
    """The metrics the rules read, whether or not a rule fires: worst dead/saturated share, depth ratio."""
    dead = [a.dead for a in m.activations if a.dead is not None]
    saturated = [a.saturated for a in m.activations if a.saturated is not None]
    rms = [layer.grad_norm / layer.numel**0.5 for layer in m.layers if layer.grad_norm is not None and layer.numel]
    return {
        "dead_fraction": max(dead) if dead else None,
        "saturated_fraction": max(saturated) if saturated else None,
        "grad_rms_first_to_last": rms[0] / rms[-1] if len(rms) > 1 and rms[-1] > 0 else None,
    }


def verify_report(
    loaded: LoadedModel,
    report: Report,
    inputs: tuple[Tensor, ...],
    targets: Tensor,
    options: AnalysisOptions,
) -> Report:
    """Verify another report's findings (e.g. a run report from watch()) on a checkpoint of that model."""
    from .engine import Analyzer  # the engine imports this module

    result = report.model_copy(deep=True)
    analyzer = Analyzer(loaded)
    device = (
        torch.device(options.device)
        if options.device
        else next((p.device for p in loaded.module.parameters()), torch.device("cpu"))
    )
    loaded.module.to(device)
    inputs = tuple(t.to(device) for t in inputs)
    targets = targets.to(device)
    start = time.perf_counter()
    stats = verify_analysis(analyzer, result.findings, inputs, targets, options, lambda phase, fraction: None)
    if stats.trials:
        result.timings["verify"] = round(time.perf_counter() - start, 6)
        result.metrics.update(verify_trials=stats.trials, verify_steps=stats.steps)
    return result


def verify_report_files(
    model_path: str | os.PathLike[str], batch_path: str | os.PathLike[str], report: Report, options: AnalysisOptions
) -> Report:
    """verify_report on a model package and a batch file, as `gradhealth analyze --verify-report` runs it."""
    from .batch import read_batch
    from .loading import load_package

    inputs, targets = read_batch(batch_path)
    return verify_report(load_package(model_path, loss=options.loss), report, inputs, targets, options)
