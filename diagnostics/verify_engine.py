"""The verify check's hook into the engine: trials with the probes off, the rules re-run after each."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gradhealth.report import Finding
from torch import Tensor

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
