"""What one instrumented pass measured, in the form the rules read."""

from __future__ import annotations

from dataclasses import dataclass, field

from .curvature_stats import CurvatureStats
from .noise_stats import NoiseMeasure
from .options import AnalysisOptions
from .sketch import LayerSketch


@dataclass
class LayerMeasure:
    """A module that owns parameters, in depth (forward) order."""

    name: str
    type: str
    depth: int
    numel: int
    grad_norm: float | None
    weight_norm: float
    update_norm: float | None
    nonfinite: int
    flushed: int
    flushed_scaled: int
    subnormal: int
    nonzero_grads: int
    missing_grads: int
    weight_std: float | None = None
    fan_in: int | None = None
    fan_out: int | None = None
    next_activation: str | None = None
    output_rms: float | None = None
    output_rank: int = 0
    output_grad_rms: float | None = None
    output_nonfinite: int = 0
    output_grad_nonfinite: int = 0
    kind: str | None = None  # linear | conv | embedding | norm | other, from the graph's ops
    tied_with: list[str] = field(default_factory=list)  # modules sharing this layer's parameters
    serial_inputs: list[str] | None = None  # linear/conv layers feeding it serially; None: no graph
    bias_mean: float | None = None  # mean of the layer's bias vector (a dead ReLU's cause); None: no bias

    @property
    def grad_rms(self) -> float | None:
        """Root-mean-square of the parameter gradient."""
        return None if self.grad_norm is None else self.grad_norm / max(self.numel, 1) ** 0.5

    @property
    def weight_rms(self) -> float:
        """Root-mean-square of the parameters."""
        return float(self.weight_norm / max(self.numel, 1) ** 0.5)  # int ** float is Any in typeshed

    @property
    def grad_to_weight(self) -> float | None:
        """Relative gradient ||g|| / ||W||: how fast plain SGD moves this layer."""
        if self.grad_norm is None or self.weight_norm == 0:
            return None
        return self.grad_norm / self.weight_norm

    @property
    def update_to_weight(self) -> float | None:
        """||first optimizer step|| / ||W||."""
        if self.update_norm is None or self.weight_norm == 0:
            return None
        return self.update_norm / self.weight_norm


@dataclass
class ActivationMeasure:
    """One activation op of the graph (module or functional)."""

    name: str
    kind: str
    order: int
    mean: float
    std: float
    dead: float | None
    saturated: float | None
    nonfinite: int
    feeding_layer: str | None = None  # the parameterised layer computing its input
    input_std: float | None = None  # spread of its input (pre-activation), when judged on it


@dataclass
class RecurrentMeasure:
    """Gradient reaching each time step of a recurrent layer's input."""

    name: str
    op: str
    per_step_norm: list[float]


@dataclass
class InputMeasure:
    """Statistics of one floating-point model input."""

    index: int
    shape: list[int]
    mean: float
    std: float
    min: float
    max: float
    channel_means: list[float] | None = None
    feature_dim: int | None = None  # the feature axis: 1 for [B, F] and [B, C, ...], -1 for [B, T, F]
    feature_means: list[float] | None = None  # per feature along feature_dim (None past MAX_FEATURES)
    feature_stds: list[float] | None = None


@dataclass
class NonFiniteOrigin:
    """Where the first NaN/Inf appeared."""

    phase: str  # "input" | "weights" | "forward" | "backward" | "loss"
    layer: str
    op: str
    detail: str


@dataclass
class TargetMeasure:
    """Regression targets and the outputs they are compared with (diagnostics.targets)."""

    loss_kind: str  # "mse" | "l1" | "smooth_l1" | "huber"
    mean: float
    std: float
    output_rms: float | None  # RMS of the model's prediction; None when no layer feeds the loss directly
    column_means: list[float] | None = None  # per target column ([B] targets: one column)
    column_stds: list[float] | None = None

    @property
    def scale(self) -> float:
        """max(|mean|, std), the scale input_not_normalized reads for inputs: ~1 when standardised."""
        return max(abs(self.mean), self.std)


@dataclass
class Measurements:
    """Everything the rules may read."""

    options: AnalysisOptions
    batch_size: int
    loss: float
    layers: list[LayerMeasure]
    activations: list[ActivationMeasure] = field(default_factory=list)
    recurrent: list[RecurrentMeasure] = field(default_factory=list)
    inputs: list[InputMeasure] = field(default_factory=list)
    nonfinite_origin: NonFiniteOrigin | None = None
    hessian_max_eigenvalue: float | None = None
    preconditioned_sharpness: float | None = None  # top eigenvalue of P^-1 H under Adam/AdamW
    curvature: CurvatureStats | None = None  # intervals, top-k and density of the curvature check
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (check, reason) for requested checks not run
    graph_available: bool = True
    targets: TargetMeasure | None = None  # regression losses only
    noise: NoiseMeasure | None = None  # per-sample gradient statistics (noise check)
    distributions: dict[str, LayerSketch] = field(default_factory=dict)  # per-layer quantile sketches ("full")

    @property
    def global_grad_norm(self) -> float | None:
        """The norm clip_grad_norm_ would see."""
        squares = [layer.grad_norm**2 for layer in self.layers if layer.grad_norm is not None]
        return sum(squares) ** 0.5 if squares else None

    def layers_with_grad(self) -> list[LayerMeasure]:
        """Layers that received a finite gradient."""
        return [layer for layer in self.layers if layer.grad_norm is not None and layer.nonfinite == 0]
