"""The peers' steps (Cockpit, PyHessian, scipy eigsh reference, BackPACK exact trace), each independent of gradhealth."""

from __future__ import annotations

import copy
import importlib
import statistics
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

Values = dict[str, float]
Step = Callable[[], Values | None]


class Unavailable(Exception):
    """A row that cannot run in this environment; the message says why (not installed, not available yet)."""


def _import(module: str, package: str) -> Any:
    """Import an optional peer; a missing one is 'not installed' (pip install -e '.[bench]', see README)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cockpit imports pkg_resources, which warns on import
            return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"not installed ({package}: {exc})") from None


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def plain_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    return step


def cockpit_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, preset: str) -> Step:
    backpack = _import("backpack", "backpack-for-pytorch")
    cockpit = _import("cockpit", "cockpit-for-pytorch")
    from cockpit.utils.configuration import configuration

    model = backpack.extend(copy.deepcopy(model))
    loss_fn = backpack.extend(nn.CrossEntropyLoss())
    individual_loss_fn = nn.CrossEntropyLoss(reduction="none")
    quantities = [q for q in configuration(preset) if not isinstance(q, cockpit.quantities.Alpha)]
    tracker = cockpit.Cockpit(model.parameters(), quantities=quantities)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # a real step that leaves the weights where they are
    max_ev = [q for q in quantities if isinstance(q, cockpit.quantities.HessMaxEV)]
    global_step = [0]

    def step() -> Values:
        n = global_step[0]
        optimizer.zero_grad()
        outputs = model(x)
        loss = loss_fn(outputs, y)
        losses = individual_loss_fn(outputs, y)
        info = {"batch_size": x.shape[0], "individual_losses": losses, "loss": loss, "optimizer": optimizer}
        with tracker(n, info=info):
            loss.backward(create_graph=tracker.create_graph(n))
        optimizer.step()
        global_step[0] += 1
        if max_ev and n in max_ev[0].output:
            return {"lmax": float(max_ev[0].output[n])}
        return None

    return step


def pyhessian_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, what: str) -> Step:
    pyhessian = _import("pyhessian", "pyhessian")
    model = copy.deepcopy(model)
    criterion = nn.CrossEntropyLoss()

    def step() -> Values:
        model.zero_grad(set_to_none=True)  # hessian() reads p.grad: drop the last call's (and its graph)
        h = pyhessian.hessian(model, criterion, data=(x, y), cuda=False)  # its gradient pass, create_graph
        if what == "lmax":
            eigenvalues, _ = h.eigenvalues()  # power iteration, maxIter=100, tol=1e-3
            return {"lmax": float(eigenvalues[0])}
        return {"trace": float(statistics.mean(h.trace()))}  # Hutchinson, maxIter=100, tol=1e-3

    return step


def reference_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    sparse = _import("scipy.sparse.linalg", "scipy")
    np = _import("numpy", "numpy")
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    v0 = np.random.default_rng(0).standard_normal(dim)

    def step() -> Values:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
        products = [0]

        def matvec(v: Any) -> Any:
            products[0] += 1
            vector = torch.from_numpy(np.asarray(v, dtype=np.float32).reshape(-1))
            chunks = [
                c.view_as(p) for c, p in zip(torch.split(vector, [p.numel() for p in params]), params, strict=True)
            ]
            hv = torch.autograd.grad(grads, params, grad_outputs=chunks, retain_graph=True)
            return _flat([h.detach() for h in hv]).double().numpy()

        operator = sparse.LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
        top = sparse.eigsh(operator, k=1, which="LA", tol=1e-6, v0=v0, return_eigenvectors=False)
        return {"lmax": float(top[0]), "hvps": float(products[0])}

    return step


def exact_trace_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    """The Hessian's exact diagonal by BackPACK (ReLU, max-pool, conv, linear, cross-entropy), summed."""
    backpack = _import("backpack", "backpack-for-pytorch")
    model = backpack.extend(copy.deepcopy(model))
    loss_fn = backpack.extend(nn.CrossEntropyLoss())

    def step() -> Values:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        with backpack.backpack(backpack.extensions.DiagHessian()):
            loss.backward()
        return {"trace": float(sum(p.diag_h.sum() for p in model.parameters()))}

    return step
