"""Trace a model and its loss into the per-sample-loss program the engine runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .errors import ExportUnsupportedError, InputError
from .losses import LossFn, PerSampleLoss

PACKAGE_METADATA_FILE = "gradhealth.json"
PACKAGE_FORMAT_VERSION = 1
EXPORT_DEBUG_ENV = "GRADHEALTH_EXPORT_DEBUG"


@dataclass(frozen=True)
class PackageMetadata:
    """What a worker needs to know about a package besides its graph."""

    returns_loss: bool
    num_inputs: int
    loss: str
    format_version: int = PACKAGE_FORMAT_VERSION

    def to_json(self) -> str:
        """Serialise for the archive's extra file."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PackageMetadata:
        """Parse the archive's extra file, refusing anything malformed."""
        try:
            raw = json.loads(text)
            return cls(
                returns_loss=bool(raw["returns_loss"]),
                num_inputs=int(raw["num_inputs"]),
                loss=str(raw["loss"]),
                format_version=int(raw.get("format_version", PACKAGE_FORMAT_VERSION)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"the package's {PACKAGE_METADATA_FILE} is malformed: {exc}") from None


def as_input_tuple(inputs: Tensor | tuple[Tensor, ...] | list[Tensor]) -> tuple[Tensor, ...]:
    """Accept one tensor or a sequence of tensors as the model's positional inputs."""
    if isinstance(inputs, Tensor):
        return (inputs,)
    result = tuple(inputs)
    if not result or not all(isinstance(t, Tensor) for t in result):
        raise InputError("inputs must be a tensor or a non-empty tuple of tensors")
    return result


def check_batch_shapes(inputs: tuple[Tensor, ...], targets: Tensor) -> int:
    """All tensors share the batch dimension; return the batch size."""
    sizes = {t.shape[0] if t.dim() else None for t in (*inputs, targets)}
    if len(sizes) != 1 or None in sizes:
        shapes = [tuple(t.shape) for t in (*inputs, targets)]
        raise InputError(f"inputs and targets must share the batch dimension 0; got shapes {shapes}")
    batch = sizes.pop()
    assert batch is not None
    return batch


def _dynamic_batch_shapes(inputs: tuple[Tensor, ...]) -> dict[str, object]:
    """Mark dimension 0 of every input and the targets as one dynamic batch dimension."""
    batch = torch.export.Dim("batch")
    return {"inputs": tuple({0: batch} for _ in inputs), "targets": {0: batch}}


def export_per_sample_loss(
    model: torch.nn.Module,
    loss: str | LossFn,
    inputs: Tensor | tuple[Tensor, ...],
    targets: Tensor,
) -> torch.export.ExportedProgram:
    """Export model+loss in train mode with a dynamic batch dim; explain failures."""
    inputs = as_input_tuple(inputs)
    batch = check_batch_shapes(inputs, targets)
    if batch < 2:
        raise InputError("the example batch needs at least 2 samples to export a dynamic batch")
    wrapper = PerSampleLoss(model, loss).train()
    with torch.no_grad():
        probe = wrapper(*inputs, targets=targets)
    if probe.shape != (batch,):
        raise InputError(f"the loss must give one value per sample, shape [{batch}]; got {tuple(probe.shape)}")
    torch_stderr = io.StringIO()  # torch.export prints the partial graph to stderr before raising
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(torch_stderr):
            # nn.RNN/LSTM re-assign _flat_weights during tracing; the weights are still lifted.
            warnings.filterwarnings("ignore", message=".*_flat_weights.*")
            exported = torch.export.export(
                wrapper, inputs, kwargs={"targets": targets}, dynamic_shapes=_dynamic_batch_shapes(inputs)
            )
    except Exception as exc:  # torch.export raises many unrelated types
        raise ExportUnsupportedError(_export_failure(exc, torch_stderr.getvalue())) from exc
    sys.stderr.write(torch_stderr.getvalue())  # a successful export's warnings still reach the user
    return exported


def _export_failure(exc: Exception, torch_output: str) -> str:
    """Cause and remedy first; torch's partial graph only when GRADHEALTH_EXPORT_DEBUG is set."""
    message = (
        f"torch.export could not trace this model: {type(exc).__name__}: {str(exc).strip()[:600]}\n"
        "What to do: remove data-dependent Python control flow (use torch.cond or torch.where), "
        "avoid .item()/.tolist() and Python-side randomness in forward; or ask your "
        "deployment to register a server-side factory (entry-point group gradhealth.models). "
        "TorchScript is not accepted: the service cannot vet the file and process ops it may call."
    )
    if not torch_output.strip():
        return message
    if os.environ.get(EXPORT_DEBUG_ENV, "") not in ("", "0"):
        return f"{message}\n\ntorch.export's output (the graph traced so far):\n{torch_output}"
    lines = len(torch_output.strip().splitlines())
    return (
        f"{message}\n(torch.export also printed {lines} lines of partial graph: set {EXPORT_DEBUG_ENV}=1 to see them)"
    )
