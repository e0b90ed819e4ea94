"""Proves, with plain torch autograd and no gradhealth code, that every zoo case is what it
claims: each declared pathology is measurably there, healthy cases are boring, and every
case exports with ``torch.export`` with a dynamic batch dimension.

The measurements (``measure``) are deliberately simple and independent of the engine:

* layer order = order in which modules that own parameters are first called;
* weight-gradient RMS per module (its own parameters); ``weight_grad_ratio`` = first/last;
* back-propagated gradient RMS = RMS of dL/d(module output); ``backprop_ratio`` compares the
  first parameterised module with the last one whose output has the same rank (so a global
  average pool, which divides the per-element gradient by H*W or T, is not mistaken for
  vanishing); ``forward_ratio`` does the same with the output RMS;
* through-time ratio for recurrent cases: RMS of dL/dx_t at t=0 over t=T-1;
* activations are captured with a TorchFunctionMode (relu/sigmoid/tanh, functional or
  module) and attributed to the innermost module whose forward was running;
* a dead ReLU unit is a feature (channel for conv maps, last dim otherwise) that is zero
  for the whole batch; a saturated sigmoid/tanh output has derivative < 1% of its max;
* lambda_max comes from the dense Hessian of the mean loss w.r.t. all parameters;
* update ratios come from a real optimizer step on a float64 copy of the model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

try:
    from tests import noise_proofs, zoo
except ImportError:  # tests/ itself is on sys.path (pytest rootdir-less import mode)
    import noise_proofs
    import zoo

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RULES = {
    "non_finite",
    "vanishing_gradient",
    "exploding_gradient",
    "dead_relu",
    "saturated_activation",
    "unused_parameters",
    "input_not_normalized",
    "lr_too_high",
    "update_ratio",
    "fp16_underflow",
    "poor_initialization",
    "unscaled_targets",
    "batch_size_wasteful",
    "noisy_layer",
}
ARCHS = {"mlp", "cnn", "rnn", "lstm", "transformer"}
FP16_TINY = 2.0**-24

# ----------------------------------------------------------------------------------------
# Losses and the export wrapper
# ----------------------------------------------------------------------------------------

_LOSSES = {
    "cross_entropy": F.cross_entropy,
    "nll": F.nll_loss,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "smooth_l1": F.smooth_l1_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
}


def per_sample_loss(loss, outputs: Tensor, targets: Tensor) -> Tensor:
    value = loss(outputs, targets) if callable(loss) else _LOSSES[loss](outputs, targets, reduction="none")
    if value.dim() > 1:
        value = value.flatten(1).mean(dim=1)
    return value


class LossWrapper(nn.Module):
    def __init__(self, model: nn.Module, loss):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, *inputs: Tensor, targets: Tensor) -> Tensor:
        return per_sample_loss(self.loss, self.model(*inputs), targets)


# ----------------------------------------------------------------------------------------
# Probe: hooks + activation capture
# ----------------------------------------------------------------------------------------

_ACT_KINDS: dict[object, str] = {}
for _fn, _kind in [
    (F.relu, "relu"),
    (torch.relu, "relu"),
    (Tensor.relu, "relu"),
    (torch.sigmoid, "sigmoid"),
    (Tensor.sigmoid, "sigmoid"),
    (torch.tanh, "tanh"),
    (Tensor.tanh, "tanh"),
    (F.tanh, "tanh"),
    (F.sigmoid, "sigmoid"),
]:
    _ACT_KINDS[_fn] = _kind


class _ActivationMode(TorchFunctionMode):
    def __init__(self, probe: Probe):
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        try:
            kind = _ACT_KINDS.get(func)
        except TypeError:
            kind = None
        if kind is not None and isinstance(out, Tensor):
            owner = self.probe.stack[-1] if self.probe.stack else ""
            self.probe.acts.append((owner, kind, out.detach()))
        return out


def _first_tensor(output) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


class Probe:
    """Records call order, module outputs (with retained grads) and activations."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.stack: list[str] = []
        self.call_order: list[str] = []
        self.outputs: dict[str, Tensor] = {}
        self.acts: list[tuple[str, str, Tensor]] = []
        self.first_nonfinite: str | None = None
        self._handles = []
        self._mode = _ActivationMode(self)

    def _pre(self, name, module, args):
        self.stack.append(name)
        if name not in self.call_order:
            self.call_order.append(name)

    def _post(self, name, module, args, output):
        self.stack.pop()
        out = _first_tensor(output)
        if out is None or not out.is_floating_point() or name in self.outputs:
            return
        if out.requires_grad:
            out.retain_grad()
        self.outputs[name] = out
        if self.first_nonfinite is None and not torch.isfinite(out).all():
            self.first_nonfinite = name

    def __enter__(self) -> Probe:
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(partial(self._pre, name)))
            self._handles.append(module.register_forward_hook(partial(self._post, name)))
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for h in self._handles:
            h.remove()


def _rms(t: Tensor) -> float:
    return t.detach().double().pow(2).mean().sqrt().item()


def dead_fraction(t: Tensor) -> float:
    """Fraction of units (channels of conv maps, last dim otherwise) zero on the whole batch."""
    unit_dim = 1 if t.dim() == 4 else t.dim() - 1
    active = (t > 0).transpose(0, unit_dim).reshape(t.shape[unit_dim], -1).any(dim=1)
    return 1.0 - active.double().mean().item()


def saturated_fraction(kind: str, t: Tensor) -> float:
    if kind == "sigmoid":
        deriv = t * (1 - t) / 0.25
    else:
        deriv = 1 - t * t
    return (deriv.double() < 0.01).double().mean().item()


def lstm_gate_saturation(lstm: nn.LSTM, x: Tensor, seq: Tensor) -> float:
    """Recompute a 1-layer batch_first LSTM's gates from its weights and its own outputs."""
    assert lstm.num_layers == 1 and lstm.batch_first and not lstm.bidirectional
    h_prev = torch.cat([torch.zeros_like(seq[:, :1]), seq[:, :-1]], dim=1)
    z = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + h_prev @ lstm.weight_hh_l0.T + lstm.bias_hh_l0
    i, f, g, o = z.detach().chunk(4, dim=-1)
    flat = [saturated_fraction("sigmoid", torch.sigmoid(a)) for a in (i, f, o)]
    flat.append(saturated_fraction("tanh", torch.tanh(g)))
    return sum(flat) / 4


# ----------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------


@dataclass
class Measured:
    loss: float
    param_order: list[str]
    grad_rms: dict[str, float]
    weight_rms: dict[str, float]
    act_grad_rms: dict[str, float]
    out_rms: dict[str, float]
    out_rank: dict[str, int]
    acts: list[tuple[str, str, float]]  # owner, kind, dead or saturated fraction
    lstm_saturation: dict[str, float]
    first_nonfinite: str | None
    grads_finite: bool
    unused: list[str]
    input_stats: list[tuple[float, float]]
    time_ratio: float | None
    fp16_tiny_fraction: float

    @property
    def weight_grad_ratio(self) -> float:
        first, last = self.param_order[0], self.param_order[-1]
        return self.grad_rms[first] / self.grad_rms[last]

    def _same_rank_ends(self, values: dict[str, float]) -> tuple[str, str]:
        """First parameterised module, and the last one whose output has the same rank.

        Comparing like with like keeps global pooling (over space or time), which divides
        the per-element gradient by H*W or T, out of the ratio.
        """
        first = self.param_order[0]
        last = [n for n in self.param_order if n in values and self.out_rank[n] == self.out_rank[first]]
        return first, last[-1]

    @property
    def backprop_ratio(self) -> float:
        first, last = self._same_rank_ends(self.act_grad_rms)
        return self.act_grad_rms[first] / self.act_grad_rms[last]

    @property
    def forward_ratio(self) -> float:
        first, last = self._same_rank_ends(self.out_rms)
        return self.out_rms[last] / self.out_rms[first]

    @property
    def max_grad_to_weight(self) -> float:
        return max(
            self.grad_rms[n] / self.weight_rms[n]
            for n in self.param_order
            if n in self.grad_rms and self.weight_rms.get(n, 0) > 0
        )


def _direct_params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters(recurse=False))


def measure(case: zoo.ZooCase) -> Measured:
    model, loss, inputs, targets = case.build()
    assert model.training, "zoo models must be built in train mode"
    inputs = tuple(i.detach().clone().requires_grad_(True) if i.is_floating_point() else i for i in inputs)
    with Probe(model) as probe:
        outputs = model(*inputs)
    loss_vec = per_sample_loss(loss, outputs, targets)
    total = loss_vec.mean()
    total.backward()

    modules = dict(model.named_modules())
    param_order = [n for n in probe.call_order if _direct_params(modules[n])]
    grad_rms, weight_rms = {}, {}
    for n in param_order:
        params = _direct_params(modules[n])
        grads = [p.grad.flatten() for p in params if p.grad is not None]
        if grads:
            grad_rms[n] = _rms(torch.cat(grads))
        weight_rms[n] = _rms(torch.cat([p.detach().flatten() for p in params]))
    act_grad_rms = {
        n: _rms(probe.outputs[n].grad) for n in param_order if n in probe.outputs and probe.outputs[n].grad is not None
    }
    out_rms = {n: _rms(probe.outputs[n]) for n in param_order if n in probe.outputs}

    acts = []
    for owner, kind, t in probe.acts:
        value = dead_fraction(t) if kind == "relu" else saturated_fraction(kind, t)
        acts.append((owner, kind, value))

    lstm_sat = {}
    for n in param_order:
        if isinstance(modules[n], nn.LSTM):
            lstm_sat[n] = lstm_gate_saturation(modules[n], inputs[0], probe.outputs[n])

    all_grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in all_grads]).abs()
    tiny = ((flat > 0) & (flat < FP16_TINY)).double().mean().item()

    time_ratio = None
    if case.arch in ("rnn", "lstm") and inputs[0].is_floating_point():
        g = inputs[0].grad
        time_ratio = _rms(g[:, 0]) / max(_rms(g[:, -1]), 1e-300)

    return Measured(
        loss=total.item(),
        param_order=param_order,
        grad_rms=grad_rms,
        weight_rms=weight_rms,
        act_grad_rms=act_grad_rms,
        out_rms=out_rms,
        out_rank={n: probe.outputs[n].dim() for n in param_order if n in probe.outputs},
        acts=acts,
        lstm_saturation=lstm_sat,
        first_nonfinite=probe.first_nonfinite,
        grads_finite=all(torch.isfinite(g).all().item() for g in all_grads),
        unused=[n for n, p in model.named_parameters() if p.grad is None],
        input_stats=[
            (i.detach().double().mean().item(), i.detach().double().std().item())
            for i in inputs
            if i.is_floating_point()
        ],
        time_ratio=time_ratio,
        fp16_tiny_fraction=tiny,
    )


def update_ratios(case: zoo.ZooCase) -> dict[str, float]:
    """||delta W|| / ||W|| per module after one real optimizer step, in float64."""
    model, loss, inputs, targets = case.build()
    model = model.double()
    inputs = tuple(i.double() if i.is_floating_point() else i for i in inputs)
    targets = targets.double() if targets.is_floating_point() else targets
    per_sample_loss(loss, model(*inputs), targets).mean().backward()
    spec = dict(case.optimizer)
    name = spec.pop("name")
    opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[name]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt_cls(model.parameters(), **spec).step()
    ratios = {}
    for mname, module in model.named_modules():
        names = [f"{mname}.{pn}" if mname else pn for pn, _ in module.named_parameters(recurse=False)]
        if not names:
            continue
        old = torch.cat([before[n].flatten() for n in names])
        new = torch.cat([dict(model.named_parameters())[n].detach().flatten() for n in names])
        if old.norm() > 0 and (new - old).norm() > 0:
            ratios[mname] = ((new - old).norm() / old.norm()).item()
    return ratios


def lambda_max(case: zoo.ZooCase) -> float:
    """Top eigenvalue of the dense Hessian of the mean loss w.r.t. all parameters."""
    model, loss, inputs, targets = case.build()
    model = model.double()
    inputs = tuple(i.double() if i.is_floating_point() else i for i in inputs)
    targets = targets.double() if targets.is_floating_point() else targets
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert flat.numel() <= 2000, "dense Hessian only for tiny models"

    def f(vec: Tensor) -> Tensor:
        params, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            params[n] = vec[i : i + s.numel()].view(s)
            i += s.numel()
        out = functional_call(model, params, inputs)
        return per_sample_loss(loss, out, targets).mean()

    hess = torch.autograd.functional.hessian(f, flat)
    return torch.linalg.eigvalsh(hess)[-1].item()


def sgd_trajectory(case: zoo.ZooCase, steps: int = 50) -> list[float]:
    model, loss, inputs, targets = case.build()
    spec = dict(case.optimizer)
    spec.pop("name")
    opt = torch.optim.SGD(model.parameters(), **spec)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        value = per_sample_loss(loss, model(*inputs), targets).mean()
        losses.append(value.item())
        value.backward()
        opt.step()
    return losses


_CACHE: dict[str, Measured] = {}


def measured(case: zoo.ZooCase) -> Measured:
    if case.name not in _CACHE:
        _CACHE[case.name] = measure(case)
    return _CACHE[case.name]


def _matches(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


# ----------------------------------------------------------------------------------------
# Per-rule proofs: each returns the number(s) that prove the claim
# ----------------------------------------------------------------------------------------


def prove_non_finite(case, m: Measured, prefixes) -> dict:
    assert not math.isfinite(m.loss), f"loss is finite: {m.loss}"
    assert m.first_nonfinite is not None
    for prefix in prefixes:
        assert _matches(m.first_nonfinite, prefix), (m.first_nonfinite, prefix)
    return {"first_nonfinite": m.first_nonfinite, "loss": m.loss}


def prove_vanishing(case, m: Measured, prefixes) -> dict:
    if m.time_ratio is not None:
        assert m.time_ratio < 1e-3, f"dL/dx_0 / dL/dx_T = {m.time_ratio:.3g}"
        for prefix in prefixes:
            assert any(_matches(n, prefix) for n in m.param_order), prefix
        return {"time_ratio": m.time_ratio}
    assert m.backprop_ratio < 1e-3, f"backprop first/last = {m.backprop_ratio:.3g}"
    for prefix in prefixes:
        assert _matches(m.param_order[0], prefix), (m.param_order[0], prefix)
    return {"backprop_ratio": m.backprop_ratio, "weight_grad_ratio": m.weight_grad_ratio}


def prove_exploding(case, m: Measured, prefixes) -> dict:
    assert math.isfinite(m.loss) and m.grads_finite
    if m.time_ratio is not None:
        assert m.time_ratio > 1e3, f"dL/dx_0 / dL/dx_T = {m.time_ratio:.3g}"
        return {"time_ratio": m.time_ratio}
    assert m.backprop_ratio > 1e3, f"backprop first/last = {m.backprop_ratio:.3g}"
    assert m.max_grad_to_weight > 1e2, f"max grad/weight = {m.max_grad_to_weight:.3g}"
    return {
        "backprop_ratio": m.backprop_ratio,
        "weight_grad_ratio": m.weight_grad_ratio,
        "max_grad_to_weight": m.max_grad_to_weight,
    }


def prove_dead_relu(case, m: Measured, prefixes) -> dict:
    out = {}
    for prefix in prefixes:
        fracs = [v for owner, kind, v in m.acts if kind == "relu" and _matches(owner, prefix)]
        assert fracs, f"no ReLU owned by {prefix}"
        assert max(fracs) > 0.5, f"{prefix}: dead fraction {fracs}"
        out[prefix] = max(fracs)
    return out


def prove_saturated(case, m: Measured, prefixes) -> dict:
    out = {}
    for prefix in prefixes:
        fracs = [v for owner, kind, v in m.acts if kind in ("sigmoid", "tanh") and _matches(owner, prefix)]
        fracs += [v for n, v in m.lstm_saturation.items() if _matches(n, prefix)]
        assert fracs, f"no sigmoid/tanh owned by {prefix}"
        assert max(fracs) > 0.5, f"{prefix}: saturated fraction {fracs}"
        out[prefix] = max(fracs)
    return out


def prove_unused(case, m: Measured, prefixes) -> dict:
    assert m.unused
    model = case.build()[0]
    for prefix in prefixes:
        under = [n for n, _ in model.named_parameters() if _matches(n, prefix)]
        assert under and set(under) <= set(m.unused), (prefix, under, m.unused)
    return {"unused": len(m.unused)}


def prove_input_not_normalized(case, m: Measured, prefixes) -> dict:
    assert any(abs(mu) > 3 or sd > 10 or sd < 0.1 for mu, sd in m.input_stats), m.input_stats
    return {"input_mean_std": m.input_stats}


def prove_lr_too_high(case, m: Measured, prefixes) -> dict:
    assert "curvature" in case.checks and case.optimizer["name"] == "sgd"
    lam = lambda_max(case)
    lr, beta = case.optimizer["lr"], case.optimizer.get("momentum", 0.0)
    assert lam * lr > 2 * (1 + beta), (lam, lr, beta)
    return {"lambda_max": lam, "lr*lambda": lam * lr, "threshold": 2 * (1 + beta)}


def prove_update_ratio(case, m: Measured, prefixes) -> dict:
    ratios = update_ratios(case)
    values = sorted(ratios.values())
    median = values[len(values) // 2]
    assert median > 0.1 or median < 1e-5, ratios
    return {"median_update_ratio": median, "min": values[0], "max": values[-1]}


def prove_fp16_underflow(case, m: Measured, prefixes) -> dict:
    assert case.precision == "fp16"
    assert m.fp16_tiny_fraction > 0.5, m.fp16_tiny_fraction
    return {"fp16_tiny_fraction": m.fp16_tiny_fraction}


def prove_poor_initialization(case, m: Measured, prefixes) -> dict:
    assert m.forward_ratio < 1e-2 or m.forward_ratio > 1e2, m.forward_ratio
    return {"forward_ratio": m.forward_ratio}


def _fit_in_target_units(case, standardise: bool, optimizer: str, steps: int = 100) -> float:
    """MSE after a short run, in units of the targets' variance (1.0 = no better than the mean)."""
    model, _, inputs, y = case.build()
    target = (y - y.mean()) / y.std() if standardise else y
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.01)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=1e-3)
    )
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(model(*inputs), target)
        loss.backward()
        opt.step()
    return loss.item() / (1.0 if standardise else float(y.var()))


def prove_unscaled_targets(case, m: Measured, prefixes) -> dict:
    model, _, inputs, y = case.build()
    scale = max(abs(float(y.mean())), float(y.std()))
    with torch.no_grad():
        output_rms = float(model(*inputs).pow(2).mean().sqrt())
    assert scale > 5 and output_rms * 5 < scale, (scale, output_rms)
    out = {"target_scale": scale, "output_rms": output_rms}
    for optimizer in ("sgd", "adam"):
        raw, standardised = (_fit_in_target_units(case, s, optimizer) for s in (False, True))
        assert raw > 1.0 and standardised < 0.2, (optimizer, raw, standardised)
        out[f"{optimizer}_fit_raw_vs_standardised"] = (raw, standardised)
    return out


PROOFS = {
    "non_finite": prove_non_finite,
    "vanishing_gradient": prove_vanishing,
    "exploding_gradient": prove_exploding,
    "dead_relu": prove_dead_relu,
    "saturated_activation": prove_saturated,
    "unused_parameters": prove_unused,
    "input_not_normalized": prove_input_not_normalized,
    "lr_too_high": prove_lr_too_high,
    "update_ratio": prove_update_ratio,
    "fp16_underflow": prove_fp16_underflow,
    "poor_initialization": prove_poor_initialization,
    "unscaled_targets": prove_unscaled_targets,
    "batch_size_wasteful": noise_proofs.prove_batch_size_wasteful,
    "noisy_layer": noise_proofs.prove_noisy_layer,
}


def prove_healthy(case, m: Measured) -> dict:
    assert math.isfinite(m.loss) and m.grads_finite and m.first_nonfinite is None
    assert not m.unused, m.unused
    assert 1e-2 <= m.weight_grad_ratio <= 1e2, m.weight_grad_ratio
    assert 1e-2 <= m.backprop_ratio <= 1e2, m.backprop_ratio
    assert 1e-2 <= m.forward_ratio <= 1e2, m.forward_ratio
    assert m.max_grad_to_weight < 10, m.max_grad_to_weight
    if m.time_ratio is not None:
        assert 1e-2 <= m.time_ratio <= 1e2, m.time_ratio
    for owner, kind, v in m.acts:
        assert v < 0.5, (owner, kind, v)
    for n, v in m.lstm_saturation.items():
        assert v < 0.5, (n, v)
    for mu, sd in m.input_stats:
        assert abs(mu) < 0.5 and 0.5 < sd < 2, (mu, sd)
    assert m.fp16_tiny_fraction < 0.05, m.fp16_tiny_fraction
    out = {
        "weight_grad_ratio": m.weight_grad_ratio,
        "backprop_ratio": m.backprop_ratio,
        "forward_ratio": m.forward_ratio,
        "max_act_fraction": max((v for *_, v in m.acts), default=0.0),
    }
    if case.optimizer:
        ratios = update_ratios(case)
        assert all(1e-5 < r < 0.1 for r in ratios.values()), ratios
        out["update_ratio_range"] = (min(ratios.values()), max(ratios.values()))
    if "curvature" in case.checks:
        lam = lambda_max(case)
        lr, beta = case.optimizer["lr"], case.optimizer.get("momentum", 0.0)
        assert lam * lr < 2 * (1 + beta), (lam, lr, beta)
        out["lr*lambda"] = lam * lr
    return out


# ----------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------


def _id(case: zoo.ZooCase) -> str:
    return case.name


def test_zoo_contract():
    names = [c.name for c in zoo.ALL]
    assert len(names) == len(set(names))
    assert len(zoo.PATHOLOGICAL) >= 22 and len(zoo.HEALTHY) >= 7
    assert zoo.ALL == zoo.PATHOLOGICAL + zoo.HEALTHY
    covered = set()
    for case in zoo.ALL:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", case.name), case.name
        assert zoo.by_name(case.name) is case
        assert case.arch in ARCHS
        assert case.precision in ("fp32", "fp16", "bf16")
        assert "standard" in case.checks
        assert case.note
        assert case.healthy == (not case.expect)
        assert set(case.expect) <= RULES, case.expect
        for prefixes in case.expect.values():
            assert isinstance(prefixes, tuple)
        covered |= set(case.expect)
        if "lr_too_high" in case.expect:
            assert "curvature" in case.checks and case.optimizer["name"] == "sgd"
        if "update_ratio" in case.expect:
            assert case.optimizer is not None
        if "fp16_underflow" in case.expect:
            assert case.precision == "fp16"
    assert covered == RULES
    assert {c.arch for c in zoo.PATHOLOGICAL} == ARCHS
    with pytest.raises(KeyError):
        zoo.by_name("no_such_case")


@pytest.mark.parametrize("case", zoo.ALL, ids=_id)
def test_build_is_deterministic(case):
    m1, l1, x1, y1 = case.build()
    m2, l2, x2, y2 = case.build()
    assert l1 == l2 or (callable(l1) and l1 is l2)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=k)
    for a, b in zip((*x1, y1), (*x2, y2), strict=True):
        assert torch.equal(a, b)
    assert all(m.training for m in m1.modules())


@pytest.mark.parametrize("case", zoo.PATHOLOGICAL, ids=_id)
def test_pathology_is_real(case):
    m = measured(case)
    evidence = {rule: PROOFS[rule](case, m, prefixes) for rule, prefixes in case.expect.items()}
    assert evidence


@pytest.mark.parametrize("case", zoo.HEALTHY, ids=_id)
def test_healthy_is_healthy(case):
    prove_healthy(case, measured(case))


def test_lr_too_high_really_diverges():
    """The lr_too_high case blows up under its own optimizer; its healthy twin descends."""
    bad = sgd_trajectory(zoo.by_name("mlp_sgd_lr_above_edge_of_stability"))
    good = sgd_trajectory(zoo.by_name("small_mlp_sgd_stable_lr"))
    assert not math.isfinite(bad[-1]) or max(bad) > 10 * bad[0], bad
    assert good[-1] <= good[0], good


@pytest.mark.filterwarnings("ignore:The tensor attributes .*_flat_weights")
@pytest.mark.parametrize("case", zoo.ALL, ids=_id)
def test_exports_with_dynamic_batch(case):
    model, loss, inputs, targets = case.build()
    wrapper = LossWrapper(model, loss)
    batch = torch.export.Dim("batch", min=2)
    dynamic_shapes = {"inputs": tuple({0: batch} for _ in inputs), "targets": {0: batch}}
    ep = torch.export.export(wrapper, tuple(inputs), {"targets": targets}, dynamic_shapes=dynamic_shapes)
    exported = ep.module()
    nonfinite = "non_finite" in case.expect
    for n in (targets.shape[0], targets.shape[0] // 2):
        sub_inputs = tuple(i[:n] for i in inputs)
        got = exported(*sub_inputs, targets=targets[:n])
        assert got.shape == (n,)
        if nonfinite:
            assert not torch.isfinite(got).all()
            continue
        want = wrapper(*sub_inputs, targets=targets[:n])
        assert torch.isfinite(want).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
