"""Load a model package (a checked torch.export archive) without unpickling client bytes.

TorchScript is refused: its code can call file and process ops (aten::save, torch.from_file) that
only a full interpreter audit could rule out, and it gives parameter-level diagnostics only.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import torch
from torch import Tensor, fx

from .errors import InputError
from .export import PACKAGE_METADATA_FILE, PackageMetadata
from .losses import LossFn, per_sample, resolve_loss

WRAPPER_PREFIX = "model."


@dataclass
class LoadedModel:
    """A runnable model that maps (inputs, targets) to a per-sample loss vector."""

    module: torch.nn.Module
    format: str  # "torch.export"
    returns_loss: bool
    loss_fn: LossFn | None
    graph_module: fx.GraphModule | None
    param_prefix: str

    def per_sample_loss(self, inputs: tuple[Tensor, ...], targets: Tensor) -> Tensor:
        """Run forward and return the loss vector [B]."""
        if self.returns_loss:
            loss_vec: Tensor = self.module(*inputs, targets=targets)  # Module.__call__ returns Any
            return loss_vec
        assert self.loss_fn is not None
        return per_sample(self.loss_fn(self.module(*inputs), targets))

    def display_name(self, path: str) -> str:
        """The user's own module path, without our wrapper's prefix."""
        if self.param_prefix and path.startswith(self.param_prefix):
            return path[len(self.param_prefix) :]
        return "(model)" if path + "." == self.param_prefix else path


def _alias_key(param: Tensor) -> tuple[object, ...]:
    """Parameters with one key view the same memory the same way: they are one parameter."""
    return (
        param.device,
        param.dtype,
        param.untyped_storage().data_ptr(),
        param.storage_offset(),
        tuple(param.shape),
        param.stride(),
    )


def tie_aliased_parameters(module: torch.nn.Module) -> dict[str, list[str]]:
    """Re-tie weights that export saved as separate parameters over one storage (GPT-2's wte/lm_head).

    Eager PyTorch trains a tied weight as one tensor that gathers both uses' gradients; after
    save/load the graph may read only one alias, so the other would look unused. Every alias is
    pointed back at the first owner's parameter. Returns first name -> the other names.
    """
    first: dict[tuple[object, ...], tuple[str, torch.nn.Parameter]] = {}
    tied: dict[str, list[str]] = {}
    for name, param in list(module.named_parameters(remove_duplicate=False)):
        if param.numel() == 0:
            continue
        key = _alias_key(param)
        if key not in first:
            first[key] = (name, param)
            continue
        owner_name, owner = first[key]
        if owner is not param:
            path, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(path), leaf, owner)
        tied.setdefault(owner_name, []).append(name)
    return tied


def _bind_loss(returns_loss: bool, loss: str | LossFn | None) -> LossFn | None:
    """Plain models need a named loss; packages built with gradhealth.package carry their own."""
    if returns_loss:
        if loss is not None:
            resolve_loss(loss)  # an unknown name is still an error worth reporting first
            raise InputError(
                "this package already computes its loss (built with gradhealth.package); drop the loss option"
            )
        return None
    if loss is None:
        raise InputError(
            "this model returns outputs, not a loss: name the loss (e.g. --loss cross_entropy), "
            "or build the package with gradhealth.package(model, loss, ...)"
        )
    return resolve_loss(loss)


def from_exported_program(
    ep: torch.export.ExportedProgram, metadata: PackageMetadata | None, loss: str | LossFn | None
) -> LoadedModel:
    """Wrap an exported program (ours, or a plain export plus a named loss)."""
    returns_loss = metadata is not None and metadata.returns_loss
    gm = ep.module()
    if not isinstance(gm, fx.GraphModule):
        raise InputError("the exported program did not unflatten to a graph module")
    tie_aliased_parameters(gm)
    return LoadedModel(
        module=gm,
        format="torch.export",
        returns_loss=returns_loss,
        loss_fn=_bind_loss(returns_loss, loss),
        graph_module=gm,
        param_prefix=WRAPPER_PREFIX if returns_loss else "",
    )


TORCHSCRIPT_REFUSED = (
    "is a TorchScript archive, which gradhealth does not run: TorchScript code can call file and "
    "process operators that no upload check can fully rule out. Export the model instead: "
    "gradhealth.package(model, loss, example_inputs, example_targets, 'model.pt2') writes a checked "
    "torch.export archive (see README, 'Model packages')"
)


def sniff_format(path: str | os.PathLike[str]) -> str:
    """Tell a torch.export archive by its entries; refuse TorchScript and anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(
            f"{os.fspath(path)!r} is not a model package (expected a .pt2 torch.export archive "
            f"built with gradhealth.package, a zip file): {exc}"
        ) from None
    if any(n.endswith("/archive_format") or n.endswith("/archive_version") for n in names):
        return "torch.export"
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise InputError(f"{os.fspath(path)!r} {TORCHSCRIPT_REFUSED}")
    raise InputError(
        f"{os.fspath(path)!r} is a zip file but not a torch.export (.pt2) archive; "
        "build one with gradhealth.package(model, loss, example_inputs, example_targets, 'model.pt2')"
    )


def load_package(path: str | os.PathLike[str], loss: str | LossFn | None = None) -> LoadedModel:
    """Load a package file after the safety checks; the loss is needed for plain models."""
    from .archive_check import check_graph_targets, check_pt2_archive

    sniff_format(path)
    extra = {PACKAGE_METADATA_FILE: ""}
    check_pt2_archive(path)
    try:
        ep = torch.export.load(os.fspath(path), extra_files=extra)
    except Exception as exc:
        raise InputError(f"cannot load the torch.export archive: {type(exc).__name__}: {exc}") from None
    check_graph_targets(ep)
    metadata = PackageMetadata.from_json(extra[PACKAGE_METADATA_FILE]) if extra[PACKAGE_METADATA_FILE] else None
    return from_exported_program(ep, metadata, loss)
