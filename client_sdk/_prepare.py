"""Turn what a notebook has in memory (a module, tensors, an optimizer) into files and request options."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gradhealth.diagnostics.options import OptimizerSpec
from torch import Tensor

from .packaging import package, save_batch

ModelArg = torch.nn.Module | str | os.PathLike[str]
DataArg = tuple[Tensor | Sequence[Tensor], Tensor] | str | os.PathLike[str]
LossArg = str | Callable[[Tensor, Tensor], Tensor] | None
OptimizerArg = str | OptimizerSpec | dict[str, Any] | torch.optim.Optimizer | None

_TORCH_OPTIMIZERS = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw"}


@dataclass(frozen=True)
class Prepared:
    """Files ready to upload, and the loss name the server needs (None when the package has its own)."""

    model_path: Path
    batch_path: Path
    loss: str | None
    more_batches: tuple[Path, ...] = ()  # further batches, analysed and merged with the first

    @property
    def batch_paths(self) -> list[Path]:
        """Every batch file, the first first."""
        return [self.batch_path, *self.more_batches]


MAX_BATCHES = 16  # the server's bound on batch_ids


def split_data(data: DataArg | None, batches: Sequence[DataArg] | None) -> tuple[DataArg, list[DataArg]]:
    """The first batch and the rest, from data= or batches= (exactly one of them)."""
    if (data is None) == (batches is None):
        raise ValueError("pass data (one batch) or batches=[...] (several), not both and not neither")
    if batches is None:
        return data, []  # type: ignore[return-value]
    if not 1 <= len(batches) <= MAX_BATCHES:
        raise ValueError(f"batches= takes 1 to {MAX_BATCHES} batches, got {len(batches)}")
    return batches[0], list(batches[1:])


def _batch_file(data: DataArg, path: Path) -> Path:
    """A batch file for (inputs, targets) written at path, or the given file checked to exist."""
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError("data must be (inputs, targets) or the path of a batch file")
        return save_batch(path, _as_inputs(data[0]), data[1])
    if not Path(data).is_file():
        raise FileNotFoundError(f"no such batch file: {data}")
    return Path(data)


def _as_inputs(inputs: Tensor | Sequence[Tensor]) -> Tensor | tuple[Tensor, ...]:
    return inputs if isinstance(inputs, Tensor) else tuple(inputs)


def prepare(model: ModelArg, data: DataArg, loss: LossArg, workdir: Path, more: Sequence[DataArg] = ()) -> Prepared:
    """Package an in-memory model with its loss (or take a package file) and write the batches."""
    extra = tuple(_batch_file(d, workdir / f"batch.{i}.safetensors") for i, d in enumerate(more, start=1))
    prepared = _prepare_first(model, data, loss, workdir)
    return Prepared(prepared.model_path, prepared.batch_path, prepared.loss, extra)


def _prepare_first(model: ModelArg, data: DataArg, loss: LossArg, workdir: Path) -> Prepared:
    """The model package and the first batch file (whose tensors are the export example)."""
    example: tuple[Tensor | tuple[Tensor, ...], Tensor] | None = None
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError("data must be (inputs, targets) or the path of a batch file")
        example = (_as_inputs(data[0]), data[1])
        batch_path = save_batch(workdir / "batch.safetensors", *example)
    else:
        batch_path = Path(data)
        if not batch_path.is_file():
            raise FileNotFoundError(f"no such batch file: {batch_path}")
    if isinstance(model, torch.nn.Module):
        if loss is None:
            raise ValueError(
                "pass loss=...: a name (cross_entropy, mse, nll, bce_with_logits, l1, smooth_l1) or a callable "
                "(outputs, targets) -> per-sample losses"
            )
        if example is None:
            from gradhealth.diagnostics.batch import read_batch

            example = read_batch(batch_path)
        model_path = package(model, loss, example[0], example[1], workdir / "model.pt2")
        return Prepared(model_path, batch_path, None)
    model_path = Path(model)
    if not model_path.is_file():
        raise FileNotFoundError(f"no such model package: {model_path}")
    if loss is not None and not isinstance(loss, str):
        raise ValueError("a callable loss can only be packaged with the model: pass the nn.Module, not a file")
    return Prepared(model_path, batch_path, loss)


def optimizer_spec(
    optimizer: OptimizerArg,
    lr: float | None,
    momentum: float | None,
    weight_decay: float | None,
    betas: tuple[float, float] | None,
) -> OptimizerSpec | dict[str, Any] | None:
    """One optimizer description from a name plus lr, a spec, a dict, or a torch optimizer."""
    if isinstance(optimizer, torch.optim.Optimizer):
        name = _TORCH_OPTIMIZERS.get(type(optimizer).__name__)
        if name is None:
            raise ValueError(
                f"{type(optimizer).__name__} is not supported; describe it as optimizer='sgd'|'adam'|'adamw', lr=..."
            )
        group = optimizer.param_groups[0]
        lr = float(group["lr"]) if lr is None else lr
        momentum = group.get("momentum", momentum)
        weight_decay = group.get("weight_decay", weight_decay)
        betas = (float(group["betas"][0]), float(group["betas"][1])) if "betas" in group and betas is None else betas
        optimizer = name
    if optimizer is None:
        if lr is not None:
            raise ValueError("lr needs optimizer='sgd', 'adam' or 'adamw' (the update rule decides what lr means)")
        return None
    if isinstance(optimizer, str):
        if lr is None:
            raise ValueError(f"optimizer={optimizer!r} needs lr=...")
        fields: dict[str, Any] = {"name": optimizer.lower(), "lr": lr}
        for key, value in (("momentum", momentum), ("weight_decay", weight_decay), ("betas", betas)):
            if value is not None:
                fields[key] = value
        return OptimizerSpec(**fields)
    return optimizer
