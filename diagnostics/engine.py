"""Run one instrumented forward+backward and turn the measurements into a report."""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from gradhealth.report import Report
from gradhealth.report.schema import severity_at_least
from torch import Tensor

from . import report_builder
from .attention import math_attention
from .batch import float_inputs
from .curvature_pass import CurvatureOutcome, FirstOrder, first_order_backward, measure_curvature, reuses_first_order
from .errors import InputError, ModelOutOfMemory, is_out_of_memory
from .export import check_batch_shapes
from .ggn_trace import ggn_trace
from .graph_map import LayerInfo, parameter_layers
from .layer_measures import (
    activation_feeders,
    activation_measures,
    attach_next_activation,
    describe_structure,
    describe_weight,
    fallback_groups,
    main_weight,
)
from .loading import LoadedModel
from .measurements import (
    ActivationMeasure,
    InputMeasure,
    LayerMeasure,
    Measurements,
    NonFiniteOrigin,
    RecurrentMeasure,
)
from .noise import SharedPass, measure_noise, measure_shared, shared_pass
from .nonfinite import locate_forward_nonfinite
from .options import AnalysisOptions
from .param_stats import layer_param_stats
from .probes import InstrumentedGraph, instrument
from .rules import evaluate_rules
from .sketch import layer_sketches
from .targets import measure_targets
from .verify_engine import verify_analysis

ProgressFn = Callable[[str, float], None]


class _Timer:
    """Collects wall time per phase for the report's timings."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.timings: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def pick_device(requested: str | None) -> torch.device:
    """CUDA when present and not told otherwise, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Analyzer:
    """Holds an instrumented model so repeated analyses skip instrumentation."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.graph: InstrumentedGraph | None = None
        self.layer_infos: list[LayerInfo] = []
        if loaded.graph_module is not None:
            self.layer_infos = parameter_layers(loaded.graph_module)
            self.graph = instrument(loaded.graph_module, self.layer_infos)
        self._params = dict(loaded.module.named_parameters())
        self._feeders = activation_feeders(self.graph, self.layer_infos) if self.graph is not None else {}

    def _layer_groups(self) -> list[tuple[str, str, list[str]]]:
        """(path, type, parameter names) per layer, in data-flow order; tied parameters once."""
        if self.layer_infos:
            return [(info.path, info.type, info.params) for info in self.layer_infos]
        types = {path: getattr(m, "original_name", type(m).__name__) for path, m in self.loaded.module.named_modules()}
        return fallback_groups(self._params, types)

    def run(
        self,
        inputs: tuple[Tensor, ...],
        targets: Tensor,
        options: AnalysisOptions,
        progress: ProgressFn | None = None,
    ) -> Report:
        """Measure, diagnose and report; an allocation failure in any phase is a ModelOutOfMemory."""
        try:
            return self._run(inputs, targets, options, progress)
        except Exception as exc:
            if is_out_of_memory(exc) and not isinstance(exc, ModelOutOfMemory):
                raise ModelOutOfMemory(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
            raise

    def _run(
        self,
        inputs: tuple[Tensor, ...],
        targets: Tensor,
        options: AnalysisOptions,
        progress: ProgressFn | None,
    ) -> Report:
        """One instrumented forward+backward, the optional checks, the rules, the report."""
        notify = progress or (lambda phase, fraction: None)
        device = pick_device(options.device)
        timer = _Timer(device)
        batch_size = check_batch_shapes(inputs, targets)
        if batch_size < 1:
            raise InputError("the batch is empty")
        notify("prepare", 0.05)
        with timer.phase("prepare"):
            module = self.loaded.module.to(device)
            inputs = tuple(t.to(device) for t in inputs)
            targets = targets.to(device)
            if self.graph is not None and self.graph.has_recurrent:
                inputs = tuple(t.detach().requires_grad_(True) if t.is_floating_point() else t for t in inputs)
            params = dict(module.named_parameters())
            for p in params.values():
                p.grad = None
            if self.graph is not None:
                self.graph.recorder.reset()
                self.graph.recorder.enabled = True
        notify("forward_backward", 0.15)
        # the curvature check differentiates this pass's gradients again: attention then runs on the math kernel
        reuse = options.runs("curvature") and reuses_first_order(self.loaded)
        # the tapped graph serves the noise statistics and, on piecewise-linear networks, the Hessian trace
        wants_taps = options.runs("noise") or (options.runs("curvature") and options.trace_probes > 0)
        shared = self._shared_noise_pass() if wants_taps else None
        pass_model = self.loaded if shared is None else shared.loaded
        with (
            timer.phase("forward_backward"),
            math_attention() if reuse else contextlib.nullcontext(),
            shared.recording() if shared is not None else contextlib.nullcontext(),
        ):
            try:
                loss_vec = pass_model.per_sample_loss(inputs, targets)
            except InputError:
                raise  # already says what to fix
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise ModelOutOfMemory(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
                raise InputError(
                    f"the model failed on this batch: {type(exc).__name__}: {str(exc)[:500]}. "
                    f"Batch shapes: inputs {[tuple(t.shape) for t in inputs]}, targets {tuple(targets.shape)}"
                ) from None
            if loss_vec.dim() != 1 or loss_vec.shape[0] != batch_size:
                raise InputError(f"the loss must be a vector [{batch_size}], got {tuple(loss_vec.shape)}")
            loss = loss_vec.float().mean()
            first = first_order_backward(loss, params, reuse) if loss.requires_grad else None
        notify("statistics", 0.6)
        with timer.phase("statistics"):
            measurements = self._measure(params, inputs, targets, loss, batch_size, options)
        if "full" in options.checks:  # Cockpit full's gradient histograms, as TensorBoard-style quantile sketches
            with timer.phase("distributions"):
                groups = [(path, names) for path, _, names in self._layer_groups()]
                measurements.distributions = layer_sketches(params, groups)
        if options.runs("curvature"):
            notify("curvature", 0.7)
            with timer.phase("curvature"):
                curvature = self._curvature(inputs, targets, options, first, shared)
                first = None  # the second-order graph goes once the check is done
                measurements.hessian_max_eigenvalue = curvature.sharpness
                measurements.preconditioned_sharpness = curvature.preconditioned_sharpness
                measurements.skipped.extend(curvature.skipped)
                measurements.curvature = curvature.stats
        if options.runs("noise"):
            notify("noise", 0.85)
            with timer.phase("noise"):
                self._noise(measurements, inputs, targets, shared)
        shared = None  # the taps' inputs and gradients go once the checks are done
        notify("rules", 0.95)
        with timer.phase("rules"):
            findings = evaluate_rules(measurements)
        for p in params.values():
            p.grad = None
        verified = None
        if options.runs("verify") and any(severity_at_least(f.severity, "warning") for f in findings):
            with timer.phase("verify"):
                verified = verify_analysis(self, findings, inputs, targets, options, notify)
        report = report_builder.build(
            report_id=str(uuid.uuid4()),
            measurements=measurements,
            findings=findings,
            model_format=self.loaded.format,
            params=params,
            device=device,
            timings=timer.timings,
        )
        if verified is not None:
            report.metrics.update(verify_trials=verified.trials, verify_steps=verified.steps)
        return report

    def _measure(
        self,
        params: Mapping[str, Tensor],
        inputs: tuple[Tensor, ...],
        targets: Tensor,
        loss: Tensor,
        batch_size: int,
        options: AnalysisOptions,
    ) -> Measurements:
        groups = self._layer_groups()
        param_stats = layer_param_stats(params, {path: names for path, _, names in groups}, options.optimizer)
        stats = param_stats.layers
        fwd: dict[int, dict[str, float]] = {}
        bwd: dict[int, dict[str, Tensor]] = {}
        bwd_scalars: dict[int, dict[str, float]] = {}
        if self.graph is not None:
            fwd = _scalars_to_host(self.graph.recorder.results.forward)
            bwd = self.graph.recorder.results.backward
            bwd_scalars = _scalars_to_host(bwd)
        layers: list[LayerMeasure] = []
        infos = {info.path: info for info in self.layer_infos}
        for depth, (path, type_name, names) in enumerate(groups):
            s = stats[path]
            weight_name = self._main_weight(params, names, infos.get(path))
            weight = params[weight_name] if weight_name else None
            measure = LayerMeasure(
                name=self.loaded.display_name(path),
                type=type_name,
                depth=depth,
                numel=s.numel,
                grad_norm=None if s.grad_sq is None else s.grad_sq**0.5,
                weight_norm=s.weight_sq**0.5,
                update_norm=None if s.update_sq is None else s.update_sq**0.5,
                nonfinite=s.nonfinite,
                flushed=s.flushed,
                flushed_scaled=s.flushed_scaled,
                subnormal=s.subnormal,
                nonzero_grads=s.nonzero_grads,
                missing_grads=s.missing_grads,
            )
            if weight_name is not None and weight is not None:
                measure.weight_std = param_stats.param_std[weight_name]
                describe_weight(measure, weight, infos.get(path))
            bias_name = next((n for n in names if n.endswith("bias") and n in param_stats.param_mean), None)
            if bias_name is not None:
                measure.bias_mean = param_stats.param_mean[bias_name]
            describe_structure(measure, infos.get(path), self.loaded.display_name)
            if self.graph is not None and path in self.graph.layer_probe:
                probe = self.graph.layer_probe[path]
                measure.output_rms = fwd.get(probe, {}).get("rms")
                measure.output_rank = self.graph.specs[probe].output_rank
                measure.output_nonfinite = int(fwd.get(probe, {}).get("nonfinite", 0))
                if probe in bwd_scalars:
                    measure.output_grad_rms = bwd_scalars[probe]["rms"]
                    measure.output_grad_nonfinite = int(bwd_scalars[probe]["nonfinite"])
            layers.append(measure)
        activations, recurrent = self._activation_measures(fwd, bwd)
        self._attach_next_activation(layers, activations)
        measurements = Measurements(
            options=options,
            batch_size=batch_size,
            loss=float(loss.detach()),
            layers=layers,
            activations=activations,
            recurrent=recurrent,
            inputs=_input_measures(inputs),
            graph_available=self.graph is not None,
        )
        measurements.nonfinite_origin = self._nonfinite_origin(measurements, params, inputs, targets)
        measurements.targets = measure_targets(
            targets, self.loaded.graph_module, self.loaded.loss_fn, self.layer_infos, layers
        )
        return measurements

    @staticmethod
    def _main_weight(params: Mapping[str, Tensor], names: list[str], info: LayerInfo | None = None) -> str | None:
        """The layer's weight matrix or kernel (2+ dims), the tensor init schemes talk about."""
        if info is not None and info.weight is not None and info.weight in params:
            return info.weight
        return main_weight(params, names)

    def _activation_measures(
        self, fwd: dict[int, dict[str, float]], bwd: dict[int, dict[str, Tensor]]
    ) -> tuple[list[ActivationMeasure], list[RecurrentMeasure]]:
        """Activation ops (composites as one, with their feeding layer) and recurrent inputs."""
        if self.graph is None:
            return [], []
        return activation_measures(self.graph, self.loaded.display_name, fwd, bwd, self._feeders)

    def _attach_next_activation(self, layers: list[LayerMeasure], activations: list[ActivationMeasure]) -> None:
        """Record which activation follows each layer: init schemes depend on it."""
        if self.graph is not None:
            attach_next_activation(self.graph, self.layer_infos, layers)

    def _nonfinite_origin(
        self, m: Measurements, params: Mapping[str, Tensor], inputs: tuple[Tensor, ...], targets: Tensor
    ) -> NonFiniteOrigin | None:
        """Name the first place a NaN/Inf appears: inputs, weights, an op, or the backward."""
        for i, t in enumerate(inputs):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return NonFiniteOrigin("input", f"inputs[{i}]", "", f"input {i} contains NaN/Inf")
        forward_bad = (
            (not math.isfinite(m.loss))
            or any(a.nonfinite for a in m.activations)
            or any(layer.output_nonfinite for layer in m.layers)
        )
        backward_bad = any(layer.nonfinite or layer.output_grad_nonfinite for layer in m.layers)
        if not forward_bad and not backward_bad:
            return None
        for name, p in params.items():
            if not bool(torch.isfinite(p).all()):
                owner = name.rsplit(".", 1)[0]
                return NonFiniteOrigin(
                    "weights",
                    self.loaded.display_name(owner),
                    "",
                    f"parameter {self.loaded.display_name(name)} holds NaN/Inf",
                )
        if forward_bad:
            if self.graph is not None:
                self.graph.recorder.enabled = False
                try:
                    found = locate_forward_nonfinite(self.graph.module, inputs, targets)
                finally:
                    self.graph.recorder.enabled = True
                if found is not None:
                    path, op = found
                    return NonFiniteOrigin(
                        "forward", self.loaded.display_name(path) or "(loss)", op, f"first produced by {op}"
                    )
            return NonFiniteOrigin("loss", "", "", "the loss is NaN/Inf")
        for layer in reversed(m.layers):
            if layer.output_grad_nonfinite or layer.nonfinite:
                return NonFiniteOrigin(
                    "backward", layer.name, "", "the back-propagated gradient first turns NaN/Inf here"
                )
        return None

    def _curvature(
        self,
        inputs: tuple[Tensor, ...],
        targets: Tensor,
        options: AnalysisOptions,
        first: FirstOrder | None,
        shared: SharedPass | None,
    ) -> CurvatureOutcome:
        """Sharpness (and Adam's preconditioned sharpness) with the probes off; failures come back as skipped."""
        if self.graph is not None:
            self.graph.recorder.enabled = False
        try:
            trace = None
            if shared is not None and shared.loss is not None and first is not None and options.trace_probes > 0:
                try:
                    trace = ggn_trace(shared.store, shared.taps, shared.loss, targets)  # one backward, no probes
                except (RuntimeError, NotImplementedError) as exc:
                    if is_out_of_memory(exc):
                        raise
                    trace = None  # Hutch++ then measures the trace, as on any other network
            return measure_curvature(self.loaded, inputs, targets, options, first, trace)
        finally:
            if self.graph is not None:
                self.graph.recorder.enabled = True

    def _shared_noise_pass(self) -> SharedPass | None:
        """The noise check's taps on the analysis pass itself, where they cover every parameter (noise.SharedPass)."""
        groups = [(path, names) for path, _, names in self._layer_groups()]
        return shared_pass(self.loaded, groups, self.loaded.display_name)

    def _noise(self, m: Measurements, inputs: tuple[Tensor, ...], targets: Tensor, shared: SharedPass | None) -> None:
        """Per-sample gradient noise from the analysis pass's taps, else its own pass with the probes off."""
        try:
            outcome = None if shared is None else measure_shared(shared, targets.shape[0])
        except (RuntimeError, NotImplementedError) as exc:
            if is_out_of_memory(exc):
                raise
            outcome = None  # the check's own pass says what fails, as it would have alone
        if outcome is not None:
            m.noise, skipped = outcome
            m.skipped.extend(skipped)
            return
        if self.graph is not None:
            self.graph.recorder.enabled = False
        try:
            groups = [(path, names) for path, _, names in self._layer_groups()]
            m.noise, skipped = measure_noise(self.loaded, inputs, targets, groups, self.loaded.display_name)
        finally:
            if self.graph is not None:
                self.graph.recorder.enabled = True
        m.skipped.extend(skipped)


def _scalars_to_host(results: dict[int, dict[str, Tensor]]) -> dict[int, dict[str, float]]:
    """Copy every 0-dim probe statistic to the host in one transfer."""
    keys = [(probe, name) for probe, stats in results.items() for name, v in stats.items() if v.dim() == 0]
    if not keys:
        return {}
    values = torch.stack([results[p][n].float() for p, n in keys]).cpu().tolist()
    out: dict[int, dict[str, float]] = {}
    for (probe, name), value in zip(keys, values, strict=True):
        out.setdefault(probe, {})[name] = value
    return out


def _input_measures(inputs: tuple[Tensor, ...]) -> list[InputMeasure]:
    """Mean, spread and range of each floating-point input (and per channel for images)."""
    result = []
    for index, tensor in float_inputs(inputs):
        data = tensor.detach().float()
        finite = data[torch.isfinite(data)]
        if finite.numel() == 0:
            continue
        row = torch.stack(
            [finite.mean(), finite.std() if finite.numel() > 1 else finite.new_zeros(()), finite.min(), finite.max()]
        ).tolist()
        channel_means = data.transpose(0, 1).reshape(data.shape[1], -1).mean(1).tolist() if data.dim() == 4 else None
        measure = InputMeasure(index, list(tensor.shape), row[0], row[1], row[2], row[3], channel_means)
        _feature_stats(measure, data)
        result.append(measure)
    return result


# Per-feature statistics (standardize_inputs' vectors) are kept for up to this many features.
MAX_FEATURES = 1024


def _feature_stats(measure: InputMeasure, data: Tensor) -> None:
    """Mean and std per feature: columns of [B, F], channels of [B, C, ...], the last axis of [B, T, F]."""
    if data.dim() < 2 or not bool(torch.isfinite(data).all()):
        return
    dim = -1 if data.dim() == 3 else 1
    features = data.movedim(dim, 0).reshape(data.shape[dim], -1)
    if features.shape[0] > MAX_FEATURES or features.shape[1] < 2:
        return
    stats = torch.stack([features.mean(1), features.std(1)]).tolist()
    measure.feature_dim, measure.feature_means, measure.feature_stds = dim, stats[0], stats[1]
