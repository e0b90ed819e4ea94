"""The noise check against an independent per-sample loop (plain autograd, one sample at a time)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics import AnalysisOptions, analyze_module, noise_layers
from gradhealth.diagnostics.engine import Analyzer
from gradhealth.diagnostics.export import PackageMetadata, export_per_sample_loss
from gradhealth.diagnostics.loading import LoadedModel, from_exported_program
from gradhealth.diagnostics.noise_layers import SUBSET, find_taps
from gradhealth.diagnostics.noise_stats import INNER_THETA, NORM_THETA, ORTHO_NU, noise_statistics
from gradhealth.report import Report
from torch import Tensor, nn

TOLERANCE = 1e-4  # relative; fp32 gradients, fp64 statistics on both sides


class SharedMLP(nn.Module):
    """One Linear applied twice: its per-sample gradient sums both uses."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.shared = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.shared(torch.tanh(self.shared(torch.relu(self.inp(x)))))))


def _mlp() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)), torch.randn(12, 6), torch.randint(0, 3, (12,))


def _cnn() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.Flatten(), nn.Linear(36, 3)
    )
    return model, torch.randn(10, 2, 8, 8), torch.randint(0, 3, (10,))


def _shared() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(2)
    return SharedMLP(), torch.randn(9, 6), torch.randint(0, 3, (9,))


CASES = {"mlp": _mlp, "cnn": _cnn, "shared": _shared}


def _per_sample(model: nn.Module, x: Tensor, y: Tensor) -> Iterator[dict[str, Tensor]]:
    """Each sample's gradient by module path, by its own forward and backward."""
    params = dict(model.named_parameters())
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(params.values()))
        by_layer: dict[str, list[Tensor]] = {}
        for name, g in zip(params, grads, strict=True):
            by_layer.setdefault(name.rpartition(".")[0], []).append(g.double().reshape(-1))
        yield {layer: torch.cat(parts) for layer, parts in by_layer.items()}


def _gsnr(x: Tensor) -> float:
    """Mean over parameters of mean^2 / unbiased variance."""
    var = x.var(0, unbiased=True)
    live = var > 1e-12 * (x**2).mean(0)
    return float((x.mean(0)[live] ** 2 / var[live]).mean())


def _reference(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Every statistic by its definition, from explicit per-sample gradient vectors."""
    rows = list(_per_sample(model, x, y))
    n = len(rows)
    layers = {layer: torch.stack([r[layer] for r in rows]) for layer in rows[0]}
    flat = torch.cat(list(layers.values()), dim=1)
    mean = flat.mean(0)
    g2 = float(mean @ mean)
    trace = float(((flat - mean) ** 2).sum(1).sum() / (n - 1))
    inner = flat @ mean
    ortho = ((flat - inner[:, None] / g2 * mean) ** 2).sum(1)
    ref = {
        "gradient_noise_scale": trace / (g2 - trace / n) if g2 > trace / n else math.inf,
        "norm_test_ratio": trace / (n * NORM_THETA**2 * g2),
        "inner_product_test_ratio": float(inner.var(unbiased=True)) / (n * INNER_THETA**2 * g2**2),
        "orthogonality_test_ratio": float(ortho.sum() / (n - 1)) / (n * ORTHO_NU**2 * g2),
        "gsnr": _gsnr(flat),
    }
    for layer, mat in layers.items():
        ref[f"gsnr:{layer}"] = _gsnr(mat)
    return ref


@pytest.fixture(scope="module")
def reports(one_torch_thread: None) -> dict[str, tuple[Report, dict[str, float]]]:
    out = {}
    for name, build in CASES.items():
        model, x, y = build()
        report = analyze_module(model, "cross_entropy", x, y, AnalysisOptions(checks=("standard", "noise")))
        out[name] = (report, _reference(model, x, y))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_statistics_match_per_sample_loop(case: str, reports: dict[str, tuple[Report, dict[str, float]]]) -> None:
    report, ref = reports[case]
    got = {key: e.value for key, e in report.estimates.items()}
    got.update({f"gsnr:{row.name}": row.gsnr.value for row in report.layers if row.gsnr is not None})
    ref = {key: value for key, value in ref.items() if math.isfinite(value)}  # no Inf in JSON: left out
    assert set(got) == set(ref), (sorted(got), sorted(ref))
    worst = max(abs(got[k] - ref[k]) / abs(ref[k]) for k in ref)
    print(f"{case}: max relative error {worst:.2e}")
    assert worst < TOLERANCE, {k: (got[k], ref[k]) for k in ref}
    for estimate in report.estimates.values():
        assert estimate.samples == x_size(case) and estimate.method == "bootstrap over samples"
        assert estimate.low is None or estimate.high is None or estimate.low <= estimate.high


def x_size(case: str) -> int:
    """Batch size of a case."""
    return CASES[case]()[1].shape[0]


def test_bootstrap_interval_covers_the_true_value() -> None:
    """Gaussian per-sample gradients with known moments, n = 128, 100 seeded batches.

    A 95% interval should miss about 5 of 100 (binomial sd ~2.2); we allow 12 misses, since the
    bootstrap of a ratio under-covers a little at finite n (measured: 92-96 of 100 per statistic).
    """
    n, d, sigma = 128, 20, 1.5
    mu = torch.linspace(0.2, 1.0, d, dtype=torch.float64)
    g2 = float(mu @ mu)
    true = {
        "gradient_noise_scale": d * sigma**2 / g2,
        "norm_test_ratio": d * sigma**2 / (n * NORM_THETA**2 * g2),
        "inner_product_test_ratio": sigma**2 / (n * INNER_THETA**2 * g2),
        "orthogonality_test_ratio": (d - 1) * sigma**2 / (n * ORTHO_NU**2 * g2),
        "gsnr": float((mu**2 / sigma**2).mean()),
    }
    covered = dict.fromkeys(true, 0)
    for seed in range(100):
        x = mu + sigma * torch.randn(n, d, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64)
        measure = noise_statistics({"a": x[:, :10], "b": x[:, 10:]}, seed=seed)
        for key, value in true.items():
            interval = measure.estimates[key]
            covered[key] += (interval.low or 0.0) <= value <= (interval.high or math.inf)
    print(f"coverage of 100: {covered}")
    assert min(covered.values()) >= 88, covered


def test_per_sample_loop_fallback_gives_the_same_numbers(
    monkeypatch: pytest.MonkeyPatch, reports: dict[str, tuple[Report, dict[str, float]]]
) -> None:
    """When the vmapped backward fails (an op with no batching rule), one backward per sample takes over."""
    original = torch.autograd.grad

    def no_vmap(*args: object, **kwargs: object) -> object:
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented for aten::something")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    model, x, y = _shared()
    report = analyze_module(model, "cross_entropy", x, y, AnalysisOptions(checks=("noise",)))
    batched = reports["shared"][0].estimates
    assert set(report.estimates) == set(batched)
    for key, estimate in report.estimates.items():
        assert math.isclose(estimate.value, batched[key].value, rel_tol=1e-5), key


def test_one_sample_is_skipped_with_a_reason(one_torch_thread: None) -> None:
    """A package exported on a batch of 12 and analysed on one sample: the check says why it did not run."""
    model, x, y = _mlp()
    ep = export_per_sample_loss(model, "cross_entropy", (x,), y)
    loaded = from_exported_program(ep, PackageMetadata(returns_loss=True, num_inputs=1, loss="cross_entropy"), None)
    report = Analyzer(loaded).run((x[:1],), y[:1], AnalysisOptions(checks=("noise",)))
    assert not report.estimates and [s.check for s in report.skipped] == ["noise"]
    assert "at least two" in report.skipped[0].reason


def test_linear_and_conv_layers_are_tapped_and_a_shared_layer_is_not(one_torch_thread: None) -> None:
    """Goodfellow's trick covers every parameter of the mlp and cnn; the twice-used Linear goes the per-sample way."""
    covered = {}
    for name, build in CASES.items():
        model, x, y = build()
        ep = export_per_sample_loss(model, "cross_entropy", (x,), y)
        loaded = from_exported_program(ep, PackageMetadata(returns_loss=True, num_inputs=1, loss="cross_entropy"), None)
        assert loaded.graph_module is not None
        named = dict(loaded.graph_module.named_parameters())
        taps = find_taps(loaded.graph_module, named)
        covered[name] = {p for t in taps for p in (t.weight, t.bias) if p is not None}
        assert covered[name] <= set(named)
        if name != "shared":
            assert covered[name] == set(named), name
    assert covered["shared"] and not any(".shared." in p for p in covered["shared"])


def test_gsnr_of_a_wide_layer_uses_every_parameter_and_a_scaled_subset_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above SUBSET parameters the value is exact and the subset's scaled interval is close to the full bootstrap's."""
    gen = torch.Generator().manual_seed(0)
    x = torch.linspace(0.1, 1.0, 3 * SUBSET, dtype=torch.float64) + torch.randn(64, 3 * SUBSET, generator=gen)
    interval = noise_statistics({"wide": x}).layer_gsnr["wide"]
    assert interval.value == pytest.approx(_gsnr(x), rel=1e-9)
    monkeypatch.setattr(noise_layers, "SUBSET", 4 * SUBSET)
    full = noise_statistics({"wide": x}).layer_gsnr["wide"]
    assert full.value == pytest.approx(interval.value, rel=1e-9)
    assert interval.low is not None and interval.high is not None and full.low is not None and full.high is not None
    assert interval.low == pytest.approx(full.low, rel=0.1) and interval.high == pytest.approx(full.high, rel=0.1)


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_tapped_models_take_the_noise_from_the_analysis_pass(
    case: str, monkeypatch: pytest.MonkeyPatch, reports: dict[str, tuple[Report, dict[str, float]]]
) -> None:
    """Every parameter tapped: one forward serves both, with the numbers the check's own pass gives."""
    model, x, y = CASES[case]()
    ep = export_per_sample_loss(model, "cross_entropy", (x,), y)
    analyzer = Analyzer(
        from_exported_program(ep, PackageMetadata(returns_loss=True, num_inputs=1, loss="cross_entropy"), None)
    )
    forwards = []
    original = LoadedModel.per_sample_loss

    def counted(self: LoadedModel, inputs: tuple[Tensor, ...], targets: Tensor) -> Tensor:
        forwards.append(self.module)
        return original(self, inputs, targets)

    monkeypatch.setattr(LoadedModel, "per_sample_loss", counted)
    options = AnalysisOptions(checks=("standard", "noise"))
    shared = analyzer.run((x,), y, options)
    assert len(forwards) == 1  # the noise check ran no pass of its own
    monkeypatch.setattr(Analyzer, "_shared_noise_pass", lambda self: None)
    alone = analyzer.run((x,), y, options)
    assert len(forwards) == 3  # the analysis pass, then the noise check's own
    assert set(shared.estimates) == set(alone.estimates) == set(reports[case][0].estimates)
    for key, estimate in shared.estimates.items():
        assert estimate.value == pytest.approx(alone.estimates[key].value, rel=1e-6), key
