"""Assemble the JSON report from measurements and findings."""

from __future__ import annotations

import math
import platform
from collections import Counter
from collections.abc import Mapping

import torch
from gradhealth.report import (
    SEVERITY_ORDER,
    ActivationStats,
    Finding,
    LayerStats,
    ModelInfo,
    Report,
    SkippedCheck,
    health_of,
)
from gradhealth.report.schema import CurvatureSpectrum, Estimate, LayerDistribution
from torch import Tensor

from .curvature import adam_stability_limit, stability_limit
from .measurements import ActivationMeasure, LayerMeasure, Measurements
from .noise_report import attach_gsnr, noise_estimates
from .sketch import QUANTILES, LayerSketch


def _finite(value: float | None) -> float | None:
    """JSON has no NaN/Inf: report them as null (the non_finite finding says why)."""
    return value if value is not None and math.isfinite(value) else None


def _activation(a: ActivationMeasure) -> ActivationStats:
    return ActivationStats(
        kind=a.kind,
        dead_fraction=a.dead,
        saturated_fraction=a.saturated,
        mean=_finite(a.mean) or 0.0,
        std=_finite(a.std) or 0.0,
    )


def _layer(layer: LayerMeasure, activation: ActivationMeasure | None) -> LayerStats:
    flushed = layer.flushed / layer.numel if layer.grad_norm is not None and layer.numel else None
    return LayerStats(
        name=layer.name,
        type=layer.type,
        num_parameters=layer.numel,
        grad_norm=_finite(layer.grad_norm),
        grad_rms=_finite(layer.grad_rms),
        weight_norm=_finite(layer.weight_norm),
        weight_rms=_finite(layer.weight_rms),
        grad_to_weight=_finite(layer.grad_to_weight),
        update_to_weight=_finite(layer.update_to_weight),
        nonfinite=layer.nonfinite,
        fp16_underflow_fraction=flushed,
        output_grad_rms=_finite(layer.output_grad_rms),
        output_rms=_finite(layer.output_rms),
        activation=_activation(activation) if activation else None,
        extra={
            "weight_std": _finite(layer.weight_std),
            "fan_in": layer.fan_in,
            "fan_out": layer.fan_out,
            "kind": layer.kind,
            "tied_with": ", ".join(layer.tied_with) or None,
            "next_activation": layer.next_activation,
        },
    )


def _activation_row(a: ActivationMeasure) -> LayerStats:
    """An activation with no parameters of its own (nn.ReLU, or a functional call in a parameter-free block)."""
    return LayerStats(name=a.name, type=a.kind, num_parameters=0, nonfinite=a.nonfinite, activation=_activation(a))


def layer_table(m: Measurements) -> list[LayerStats]:
    """Parameter layers in depth order, each followed by the activation-only row it feeds."""
    by_name = {a.name: a for a in m.activations}
    layer_names = {layer.name for layer in m.layers}
    standalone = sorted((a for a in m.activations if a.name not in layer_names), key=lambda a: a.order)
    rows: list[LayerStats] = []
    for layer in m.layers:
        rows.append(_layer(layer, by_name.get(layer.name)))
        if layer.next_activation and standalone and standalone[0].kind == layer.next_activation:
            rows.append(_activation_row(standalone.pop(0)))
    return rows + [_activation_row(a) for a in standalone]


def rank(findings: list[Finding]) -> list[Finding]:
    """Severity order, then each finding only after the findings named in its caused_by.

    A symptom can be more severe than its cause (huge targets make an 'error' update ratio from a
    'warning' scale problem); fixing the cause fixes both, so the cause's remediation is what the
    reader (and a tool applying the first remediation) must see first.
    """
    ordered = sorted(findings, key=lambda f: -SEVERITY_ORDER[f.severity])
    by_rule: dict[str, list[Finding]] = {}
    for finding in ordered:
        by_rule.setdefault(finding.rule, []).append(finding)
    result: list[Finding] = []
    placed: set[int] = set()
    visiting: set[int] = set()

    def place(finding: Finding) -> None:
        if id(finding) in placed or id(finding) in visiting:
            return
        visiting.add(id(finding))
        for cause in finding.caused_by:
            for root in by_rule.get(cause, []):
                place(root)
        visiting.discard(id(finding))
        placed.add(id(finding))
        result.append(finding)

    for finding in ordered:
        place(finding)
    return result


def summary(findings: list[Finding], num_layers: int) -> str:
    """One sentence: the verdict and the rules behind it."""
    serious = [f for f in findings if f.severity != "info"]
    if not serious:
        return f"Gradients flow well through all {num_layers} layers; no problems found."
    counts = Counter(f.severity for f in serious)
    plural = {"critical": "critical", "error": "errors", "warning": "warnings"}
    parts = ", ".join(
        f"{counts[s]} {s if counts[s] == 1 else plural[s]}" for s in ("critical", "error", "warning") if counts[s]
    )
    rules = "; ".join(f"{f.rule} ({', '.join(f.layers[:3]) or 'model'})" for f in serious[:4])
    return f"{parts}: {rules}."


def curvature_metrics(m: Measurements) -> dict[str, float | None]:
    """Sharpness, Adam's preconditioned sharpness, and the stability limit the optimizer sets for it."""
    result: dict[str, float | None] = {}
    opt = m.options.optimizer
    if m.hessian_max_eigenvalue is not None:
        result["hessian_max_eigenvalue"] = _finite(m.hessian_max_eigenvalue)
        if opt is not None and opt.name == "sgd":
            result["stability_limit"] = stability_limit(opt.lr, opt.momentum)
    if m.preconditioned_sharpness is not None and opt is not None:
        result["preconditioned_sharpness"] = _finite(m.preconditioned_sharpness)
        result["stability_limit"] = adam_stability_limit(opt.lr, opt.betas[0])
    return result


def curvature_report(m: Measurements) -> tuple[dict[str, Estimate], CurvatureSpectrum | None]:
    """The curvature check's estimates (finite ends only) and spectrum, for Report.estimates/spectrum."""
    if m.curvature is None:
        return {}, None
    estimates = {
        key: Estimate(
            value=e.value,
            low=_finite(e.low),
            high=_finite(e.high),
            level=e.level,
            samples=max(1, e.samples),
            method=e.method,
        )
        for key, e in m.curvature.estimates.items()
        if math.isfinite(e.value)
    }
    c = m.curvature
    spectrum = None
    if c.top_eigenvalues:
        spectrum = CurvatureSpectrum(top_eigenvalues=c.top_eigenvalues, density_grid=c.density_grid, density=c.density)
    return estimates, spectrum


def metrics(m: Measurements) -> dict[str, float | int | None | list[float] | dict[str, float]]:
    """Whole-model numbers: loss, global norm, curvature, input scale."""
    result: dict[str, float | int | None | list[float] | dict[str, float]] = {
        "loss": _finite(m.loss),
        "global_grad_norm": _finite(m.global_grad_norm),
        "batch_size": m.batch_size,
    }
    result.update(curvature_metrics(m))
    for x in m.inputs:
        result[f"input_{x.index}"] = {"mean": x.mean, "std": x.std, "min": x.min, "max": x.max}
    return result


def build(
    *,
    report_id: str,
    measurements: Measurements,
    findings: list[Finding],
    model_format: str,
    params: Mapping[str, Tensor],
    device: torch.device,
    timings: dict[str, float],
) -> Report:
    """The report of one checkpoint analysis."""
    first = next(iter(params.values()), None)
    rows = layer_table(measurements)
    attach_gsnr(rows, measurements)
    report = Report(
        id=report_id,
        kind="checkpoint",
        health=health_of(findings),
        summary=summary(findings, len(measurements.layers)),
        model=ModelInfo(
            format=model_format,
            num_parameters=sum(p.numel() for p in params.values()),
            num_layers=len(measurements.layers),
            dtype=str(first.dtype).replace("torch.", "") if first is not None else "n/a",
            device=str(device),
        ),
        findings=findings,
        layers=rows,
        metrics=metrics(measurements),
        timings={k: round(v, 6) for k, v in timings.items()},
        skipped=[SkippedCheck(check=check, reason=reason) for check, reason in measurements.skipped],
        estimates=noise_estimates(measurements),
        environment={
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "precision": measurements.options.precision,
            "probes": "graph"
            if measurements.graph_available
            else "parameters-only (no exported graph: no activation probes)",
        },
    )
    curvature_estimates, report.spectrum = curvature_report(measurements)
    report.estimates.update(curvature_estimates)
    report.distributions = {path: _distribution(s) for path, s in measurements.distributions.items()}
    return report


def _distribution(s: LayerSketch) -> LayerDistribution:
    """One analysed batch's sketch as a one-step LayerDistribution (step 0), the run reports' shape."""
    return LayerDistribution(
        steps=[0],
        quantiles=list(QUANTILES),
        grad=[s.grad],
        weight=[s.weight],
        grad_zeros=[s.grad_zeros],
        grad_nonfinite=[s.grad_nonfinite],
        weight_zeros=[s.weight_zeros],
        weight_nonfinite=[s.weight_nonfinite],
        count=[s.count],
    )
