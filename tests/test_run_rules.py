"""Run rules: each fires on its pathology in a real training run, stays quiet on healthy runs, and streams exactly."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import cache
from types import FrameType

import numpy as np
import pytest
from gradhealth.diagnostics.run_rules import RUN_RULE_IDS, LogChunk, RunEvaluator
from gradhealth.report import Finding, severity_at_least
from numpy.lib.stride_tricks import sliding_window_view

from . import run_fixtures as fx

ALL_RUNS = {**fx.HEALTHY, **fx.PATHOLOGICAL}


@cache
def stream(name: str) -> fx.Stream:
    return ALL_RUNS[name]()


def evaluate(s: fx.Stream, sizes: int | list[int] = 50) -> RunEvaluator:
    ev = RunEvaluator(s.layers)
    for chunk in s.chunks(sizes):
        ev.update(chunk)
    return ev


@cache
def findings(name: str) -> list[Finding]:
    return evaluate(stream(name)).findings()


def of(name: str, rule: str, floor: str = "info") -> list[Finding]:
    return [f for f in findings(name) if f.rule == rule and severity_at_least(f.severity, floor)]


def describe(found: list[Finding]) -> str:
    return "; ".join(f"{f.severity} {f.rule} {f.step}..{f.last_step} {f.layers[:3]} {f.message[:120]}" for f in found)


def global_norm(s: fx.Stream) -> np.ndarray:
    return np.sqrt(np.nansum(s.metrics["grad_norm"] ** 2, axis=1))


# --- healthy runs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(fx.HEALTHY))
def test_healthy_run_gets_no_finding(name: str) -> None:
    assert findings(name) == [], describe(findings(name))


# --- each rule on its pathology ----------------------------------------------------------------


def test_lr_jump_to_nan_is_a_divergence_from_its_first_step() -> None:
    (div,) = of("diverge_sgd", "loss_divergence")
    assert div.severity == "error"
    assert fx.DIVERGE_AT <= div.step <= fx.DIVERGE_AT + 2, div
    assert div.evidence["nonfinite_loss"] is True
    assert div.evidence["lr_at_best"] == 0.05 and div.evidence["lr_at_start"] == 3.0
    assert div.remediation[1].params["lr"] == 0.05  # back to the lr it was stable at
    (nan,) = of("diverge_sgd", "non_finite")
    assert nan.severity == "critical" and nan.step > div.step


def test_lr_jump_without_nan_is_a_sustained_divergence() -> None:
    (div,) = of("diverge_adam", "loss_divergence")
    assert div.severity == "error" and fx.DIVERGE_AT <= div.step <= fx.DIVERGE_AT + 2, div
    s = stream("diverge_adam")
    assert div.evidence["peak_loss"] == pytest.approx(s.loss[div.evidence["peak_step"]])
    assert not of("diverge_adam", "non_finite")


def test_nan_in_one_layer_gradient_names_that_step_and_layer_first() -> None:
    (nan,) = of("nan_gradient", "non_finite")
    assert nan.severity == "critical"
    assert nan.step == fx.NAN_STEP and nan.layers[0] == fx.NAN_LAYER, nan
    assert nan.evidence["all_layers"] is False and nan.evidence["first_nonfinite"][0] == "gradients"
    s = stream("nan_gradient")
    assert nan.evidence["global_grad_norm_before"] == pytest.approx(global_norm(s)[fx.NAN_STEP - 1])
    assert nan.last_step == 299


def test_recovered_overflows_are_one_merged_warning() -> None:
    (over,) = findings("amp_like_overflow")  # nothing else: the skipped steps left the run healthy
    assert over.rule == "non_finite" and over.severity == "warning"
    assert (over.step, over.last_step) == (fx.OVERFLOW_STEPS[0], fx.OVERFLOW_STEPS[-1])
    assert over.layers == [fx.OVERFLOW_LAYER]
    assert over.evidence["bad_steps"] == 3 and over.evidence["episodes"] == 2


def test_nan_batch_hitting_every_layer_points_to_the_checkpoint_analysis() -> None:
    (bad,) = findings("bad_batch")
    assert bad.rule == "non_finite" and bad.severity == "error"  # the loss was NaN, but the run recovered
    assert bad.step == bad.last_step == fx.BAD_BATCH_STEP and bad.evidence["all_layers"] is True
    assert "every layer at once" in bad.message
    assert bad.remediation[0].action == "analyze_checkpoint" and bad.remediation[0].params["step"] == fx.BAD_BATCH_STEP


def test_single_layer_run() -> None:
    (nan,) = of("single_layer_nan", "non_finite")
    assert nan.step == 60 and nan.layers == [""]  # nn.Linear as the root module has the empty name
    assert stream("single_layer_nan").layers == [""]


def test_layer_frozen_mid_run_is_a_stall_from_that_step() -> None:
    (stall,) = of("freeze_mid_run", "stalled_layer")
    assert stall.severity == "warning" and stall.layers == [fx.FREEZE_LAYER]
    g = stream("freeze_mid_run").metrics["grad_norm"][:, 0]
    first_zero = int(np.flatnonzero(g == 0)[0])  # independent: the first step the collector saw no gradient
    assert stall.step == first_zero == fx.FREEZE_AT
    assert stall.evidence["grad_norm_before"] == pytest.approx(g[fx.FREEZE_AT - 1])
    assert not [f for f in findings("freeze_mid_run") if f.rule != "stalled_layer"], describe(
        findings("freeze_mid_run")
    )


def test_warmup_spike_that_recovers_is_never_an_error() -> None:
    s = stream("warmup_spike")
    ev = RunEvaluator(s.layers)
    worst = []
    for chunk in s.chunks(5):
        ev.update(chunk)
        worst += [f for f in ev.findings() if severity_at_least(f.severity, "error")]
    assert not worst, describe(worst)
    assert s.loss[102:104].max() > 50 * s.loss[90:100].mean()  # it really spiked
    (spike,) = [f for f in ev.findings() if f.rule == "gradient_spike"]
    assert spike.severity == "warning" and 100 <= spike.step <= 103
    (transient,) = [f for f in ev.findings() if f.rule == "loss_spike"]
    assert transient.severity == "warning" and 100 <= transient.step <= 103
    assert {f.rule for f in ev.findings()} == {"gradient_spike", "loss_spike"}


def test_transient_spike_on_a_falling_trend_is_a_recovered_warning() -> None:
    (spike,) = findings("transient_spike")  # gradient_spike alone misses it: the fall inflates its noise window
    assert spike.rule == "loss_spike" and spike.severity == "warning"
    assert spike.step == fx.SPIKE_AT and fx.SPIKE_AT <= spike.last_step < fx.SPIKE_AT + len(fx.SPIKE_LOSS)
    assert spike.layers == list(fx.SPIKE_LAYERS)
    s = stream("transient_spike")
    peak = spike.evidence["peak_step"]
    level = np.median(s.loss[fx.SPIKE_AT - 9 : fx.SPIKE_AT])  # independent: the 9 losses before the spike
    assert spike.evidence["loss_level_before"] == pytest.approx(level, rel=1e-9)
    assert spike.evidence["peak_ratio"] == pytest.approx(s.loss[peak] / level, rel=1e-9)
    assert spike.evidence["peak_ratio"] > 15
    recovered = spike.evidence["recovered_step"]
    assert spike.last_step < recovered and spike.evidence["steps_to_recover"] == recovered - spike.step
    assert (s.loss[recovered : recovered + 3] < 2 * level).all() and s.loss[recovered - 1] >= 2 * level
    G = global_norm(s)
    assert spike.evidence["grad_norm_peak_ratio"] == pytest.approx(
        G[fx.SPIKE_AT] / np.median(G[fx.SPIKE_AT - 9 : fx.SPIKE_AT]), rel=1e-9
    )


@pytest.mark.parametrize("noise", [0.05, 0.15, 0.3])
@pytest.mark.parametrize("seed", range(4))
def test_spikes_on_falling_trends(seed: int, noise: float) -> None:
    """Healthy falling runs stay quiet at every noise level; the same runs with a warm-up spike are caught."""
    healthy = evaluate(fx.falling_run(seed, noise), 37).findings()
    assert not [f for f in healthy if f.rule in ("gradient_spike", "loss_spike")], describe(healthy)
    spiked = evaluate(fx.falling_run(seed, noise, spike=True), 37).findings()
    transient = [f for f in spiked if f.rule == "loss_spike"]
    assert [f.step for f in transient] == [fx.SPIKE_AT], describe(spiked)
    assert not [f for f in spiked if severity_at_least(f.severity, "error")], describe(spiked)


def test_gradient_spike_numbers_match_an_independent_computation() -> None:
    s = stream("warmup_spike")
    (spike,) = of("warmup_spike", "gradient_spike")
    G = global_norm(s)
    peak = spike.evidence["peak_step"]
    median = np.median(G[peak - 51 : peak])  # the previous 51 finite norms
    assert spike.evidence["rolling_median_global_grad_norm"] == pytest.approx(median, rel=1e-9)
    assert spike.evidence["ratio_to_rolling_median"] == pytest.approx(G[peak] / median, rel=1e-9)
    ratios = G[51:] / np.median(sliding_window_view(G, 51)[:-1], axis=1)
    assert peak == 51 + int(np.argmax(ratios))
    max_norm = spike.remediation[0].params["max_norm"]
    assert max_norm == pytest.approx(np.quantile(G, 0.9), rel=0.1)
    assert f"max_norm={max_norm}" in spike.remediation[0].snippet


def test_vanishing_trend_names_the_first_layers() -> None:
    (van,) = of("vanishing_trend", "vanishing_gradient", "warning")
    assert van.layers[0] == "0" and van.evidence["first_layer"] == "0" and van.evidence["last_layer"] == "14"
    g = stream("vanishing_trend").metrics["grad_norm"]
    rho = np.log10(g[:, 0] / g[:, -1])
    assert van.evidence["baseline_first_to_last_ratio"] == pytest.approx(10 ** np.median(rho[:21]))
    drop = np.median(sliding_window_view(rho, 21), axis=1) - np.median(rho[:21])  # independent rolling medians
    assert van.evidence["worst_drop_factor"] == pytest.approx(10 ** -drop[: van.last_step - 20 + 1].min())
    assert drop[van.step - 20] <= -2 and van.step - 20 >= 0
    for name in fx.HEALTHY:
        assert not of(name, "vanishing_gradient")


def test_update_ratio_too_fast_and_too_slow() -> None:
    (fast,) = of("updates_too_fast", "update_ratio", "warning")
    assert "too large" in fast.title and fast.evidence["worst_median_update_to_weight"] > 0.1
    s = stream("updates_too_fast")
    r = s.metrics["update_norm"] / s.metrics["weight_norm"]
    rows = np.flatnonzero(np.isfinite(r).any(axis=1))
    med = np.array([np.median(row[np.isfinite(row) & (row > 0)]) for row in r[rows]])
    in_episode = (s.steps[rows] >= fast.step) & (s.steps[rows] <= fast.last_step)
    assert fast.evidence["worst_median_update_to_weight"] == pytest.approx(med[in_episode].max(), rel=1e-12)
    (slow,) = of("updates_too_slow", "update_ratio", "warning")
    assert "too small" in slow.title and slow.remediation[0].params["lr"] > 1e-4
    for name in fx.HEALTHY:
        assert not of(name, "update_ratio")


def test_oscillating_loss() -> None:
    (osc,) = of("oscillation", "oscillating_loss", "warning")
    loss = stream("oscillation").loss
    d = np.diff(loss)
    flips = (d[1:] * d[:-1] < 0).astype(float)
    frac = sliding_window_view(flips, 49).mean(axis=1)  # window ending at loss index e: flips[e-50 .. e-2]
    assert osc.evidence["flip_fraction"] == pytest.approx(frac.max())
    assert osc.remediation[0].params["lr"] == pytest.approx(0.28)  # halve lr=0.55
    for name in fx.HEALTHY:
        assert not of(name, "oscillating_loss")


def test_plateau_from_the_start_is_a_warning() -> None:
    (flat,) = of("plateau", "loss_plateau")
    assert flat.severity == "warning" and flat.step < 60 and flat.last_step == 499
    assert abs(flat.evidence["progress_fraction"]) < 0.05
    for name in list(fx.HEALTHY) + ["diverge_sgd", "warmup_spike", "freeze_mid_run"]:
        assert not of(name, "loss_plateau"), name


def test_every_finding_is_complete() -> None:
    seen = set()
    for name in ALL_RUNS:
        for f in findings(name):
            seen.add(f.rule)
            assert f.rule in RUN_RULE_IDS
            assert f.evidence and f.thresholds and f.remediation and all(r.detail for r in f.remediation)
            assert 0 < f.confidence <= 1 and f.step is not None and f.step <= f.last_step
            json.dumps(f.model_dump(mode="json"), allow_nan=False)
    # the activation rules read watch(activations=...) fractions, which these streams lack: tests/test_run_activation_rules.py
    assert seen == set(RUN_RULE_IDS) - {"dead_relu", "saturated_activation"}


# --- streaming: exactness, late data, absent data, cost ----------------------------------------


def snapshot(ev: RunEvaluator) -> tuple[list[dict], dict, str]:
    return [f.model_dump() for f in ev.findings()], ev.summary(), json.dumps(ev.state(), sort_keys=True)


@pytest.mark.parametrize("name", sorted(fx.PATHOLOGICAL))
def test_chunking_and_restarts_do_not_change_anything(name: str) -> None:
    s = stream(name)
    whole = snapshot(evaluate(s, len(s.steps)))
    assert snapshot(evaluate(s, 1)) == whole
    assert snapshot(evaluate(s, 7)) == whole
    assert snapshot(evaluate(s, [3, 50, 1, 20])) == whole
    state = None
    for chunk in s.chunks([13, 1, 40]):
        ev = RunEvaluator(s.layers, json.loads(json.dumps(state, allow_nan=False)) if state else None)
        ev.update(chunk)
        state = ev.state()
    assert snapshot(ev) == whole


def random_stream(seed: int, n: int = 400, L: int = 6) -> fx.Stream:
    """Noise with every oddity a stream can carry: gaps, zeros, spikes, inf/NaN, lr changes, unlogged losses."""
    rng = np.random.default_rng(seed)
    g = np.exp(rng.normal(0, 0.5, (n, L)))
    g[rng.random((n, L)) < 0.05] = np.nan  # not measured
    g[rng.integers(50, n, 5)] *= 1e3  # spikes
    g[rng.integers(50, n, 3)] = np.inf  # overflows
    g[200:260, 1] = 0.0  # a stall that resumes
    g[300:, 2] = 0.0  # one that does not
    nonfinite = np.where(np.isinf(g), 1.0, 0.0)
    w, u = np.full((n, L), np.nan), np.full((n, L), np.nan)
    w[::10], u[::10] = 5 + rng.random((n // 10, L)), 0.005 * rng.random((n // 10, L))
    u[::10][rng.random((n // 10, L)) < 0.1] = 0.0
    loss = 2.0 * np.exp(-np.arange(n) / 150) + 0.1 * rng.random(n)
    loss[250:] += np.where(np.arange(n - 250) % 2, 0.3, 0.0)  # an oscillation
    loss[rng.integers(0, n, 3)] = np.nan
    logged = rng.random(n) > 0.1
    lr = np.where(np.arange(n) < 150, 0.1, 0.5)
    lr[rng.random(n) < 0.3] = np.nan
    metrics = {"grad_norm": g, "grad_max_abs": g / 3, "nonfinite": nonfinite, "weight_norm": w, "update_norm": u}
    steps = np.cumsum(rng.integers(1, 3, n))
    return fx.Stream([f"l{i}" for i in range(L)], steps, loss, logged, lr, metrics)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_streams_are_chunk_invariant(seed: int) -> None:
    s = random_stream(seed)
    whole = snapshot(evaluate(s, len(s.steps)))
    assert whole[0], "the random stream should trip some rules"
    sizes = np.random.default_rng(seed).integers(1, 40, 50).tolist()
    assert snapshot(evaluate(s, sizes)) == whole
    assert snapshot(evaluate(s, 1)) == whole


def test_late_and_repeated_rows_are_ignored() -> None:
    s = stream("freeze_mid_run")
    ev = evaluate(s, 100)
    before = snapshot(ev)
    late = s.chunk(100, 200)
    garbage = {k: np.full_like(v, np.nan) for k, v in late.metrics.items()}
    ev.update(LogChunk(late.steps, np.full(100, np.inf), late.loss_logged, late.lr, garbage))
    assert snapshot(ev) == before
    # an overlapping batch: only the steps after the last one count
    part = RunEvaluator(s.layers)
    for chunk in s.chunks(100):
        part.update(chunk)
        part.update(s.chunk(max(0, int(chunk.steps[0]) - 30), int(chunk.steps[-1]) + 1))
    assert snapshot(part) == before


def test_absent_metrics_and_loss() -> None:
    s = stream("freeze_mid_run")
    ev = RunEvaluator(s.layers)
    for chunk in s.chunks(25):
        ev.update(LogChunk(chunk.steps, chunk.loss, np.zeros(len(chunk.steps), bool), chunk.lr, {}))
    assert ev.findings() == [] and ev.summary()["steps_seen"] == 300 and ev.summary()["last_loss"] is None
    only_grad = RunEvaluator(s.layers)
    for chunk in s.chunks(25):
        only_grad.update(LogChunk.of(chunk.steps.tolist(), metrics={"grad_norm": chunk.metrics["grad_norm"].tolist()}))
    assert [f.rule for f in only_grad.findings()] == ["stalled_layer"]
    json.dumps(only_grad.state(), allow_nan=False)


def test_wire_format_nulls() -> None:
    chunk = LogChunk.of([5, 6], loss=[0.5, None], lr=[None, 0.1], metrics={"grad_norm": [[1.0, None], [None, 2.0]]})
    assert chunk.loss_logged.tolist() == [True, False] and np.isnan(chunk.lr[0])
    ev = RunEvaluator(["a", "b"])
    ev.update(chunk)
    assert ev.summary()["last_step"] == 6 and ev.summary()["last_global_grad_norm"] == 2.0
    with pytest.raises(ValueError):
        RunEvaluator(["a", "b", "c"], ev.state())
    with pytest.raises(ValueError):
        ev.update(LogChunk.of([7], metrics={"grad_norm": [[1.0, 2.0, 3.0]]}))


def test_findings_stay_bounded() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    g = np.exp(rng.normal(0, 0.1, (n, 2)))
    g[200::100] *= 100  # a spike every 100 steps
    ev = RunEvaluator(["a", "b"])
    ev.update(LogChunk.of(np.arange(n), loss=1 + 0.01 * rng.random(n), metrics={"grad_norm": g}))
    spikes = [f for f in ev.findings() if f.rule == "gradient_spike"]
    assert 1 < len(spikes) <= 5 and spikes[-1].evidence["spiking_steps"] > 1
    assert len(json.dumps(ev.state())) < 20_000


def test_summary_numbers() -> None:
    s = stream("healthy_mlp_adam")
    summary = evaluate(s, 33).summary()
    G = global_norm(s)
    assert summary["steps_seen"] == 300 and summary["last_step"] == 299
    assert summary["last_loss"] == s.loss[-1] and summary["last_global_grad_norm"] == pytest.approx(G[-1])
    assert summary["global_grad_norm_p90"] == pytest.approx(np.quantile(G, 0.9), rel=0.04)
    assert summary["best_loss"] == pytest.approx(np.median(sliding_window_view(s.loss, 9), axis=1).min())


def _python_calls(action: Callable[[], object]) -> int:
    """Python-level calls (functions and builtins) that `action` makes: a count, not a clock, so load cannot move it."""
    calls = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        calls += event in ("call", "c_call")

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls


def test_update_cost_is_vectorised() -> None:
    """numpy does the steps x layers work: the Python calls of an update do not grow with the number of layers."""
    rng = np.random.default_rng(0)
    n = 1000

    def chunk(offset: int, L: int) -> LogChunk:
        g = np.exp(rng.normal(0, 0.3, (n, L)))
        g[:, : L // 10] = 0  # a frozen backbone
        w, u = np.full((n, L), np.nan), np.full((n, L), np.nan)
        w[::10], u[::10] = 10 + rng.random((n // 10, L)), 0.01 * rng.random((n // 10, L))
        metrics = {"grad_norm": g, "grad_max_abs": g / 10, "nonfinite": np.zeros((n, L)), "weight_norm": w}
        return LogChunk.of(
            np.arange(offset, offset + n), rng.normal(1, 0.1, n), np.full(n, 0.1), metrics | {"update_norm": u}
        )

    def second_update(L: int) -> tuple[int, RunEvaluator]:
        ev = RunEvaluator([f"blocks.{i}.fc" for i in range(L)])
        first, second = chunk(0, L), chunk(n, L)
        ev.update(first)
        return _python_calls(lambda: ev.update(second)), ev

    few, _ = second_update(100)
    many, ev = second_update(1000)
    assert many < 2 * few, (few, many)  # a Python loop over the layers would make it ~10x
    assert len(json.dumps(ev.state())) < 400_000  # O(L), not O(steps x L)


def test_a_rise_that_does_not_come_back_is_not_a_transient_spike() -> None:
    for name in ("diverge_sgd", "diverge_adam"):  # loss_divergence's: still up (or NaN) 50 steps on
        assert of(name, "loss_divergence", "error") and not of(name, "loss_spike"), describe(findings(name))
    s = fx.falling_run(0, 0.15, spike=True)
    s.loss[fx.SPIKE_AT : fx.SPIKE_AT + 70] = s.loss[fx.SPIKE_AT]  # the same jump, back only after 70 steps
    assert not [f for f in evaluate(s, 37).findings() if f.rule == "loss_spike"]
