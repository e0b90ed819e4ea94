"""The recording stride on the wire: decoded from JSON and msgpack, and rules count steps, not records, with it."""

from __future__ import annotations

import json
from functools import cache

import msgpack
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="server extra not installed")

from gradhealth.api.errors import ApiError  # noqa: E402
from gradhealth.api.run_codec import parse_body, to_log_batch  # noqa: E402
from gradhealth.diagnostics.run_rules import LogChunk, RunEvaluator  # noqa: E402

from . import run_fixtures as fx  # noqa: E402

METRICS = ["grad_norm"]
BODY = {"seq": 0, "steps": [0, 10, 20], "metrics": {"grad_norm": [[1.0], [2.0], [3.0]]}}


def decode(body: dict, media: str = "application/json") -> np.ndarray | None:
    raw = json.dumps(body).encode() if media == "application/json" else msgpack.packb(body)
    return to_log_batch(parse_body(raw, media, None, 10**6), METRICS, 1).stride


@pytest.mark.parametrize("media", ["application/json", "application/msgpack"])
def test_stride_is_optional_and_takes_one_number_or_one_per_step(media: str) -> None:
    assert decode(BODY, media) is None  # an old client: nothing changes
    assert decode({**BODY, "stride": 10}, media).tolist() == [10, 10, 10]
    assert decode({**BODY, "stride": [1, 10, 10]}, media).tolist() == [1, 10, 10]


@pytest.mark.parametrize("stride", [0, -1, 1.5, True, [10, 10], [10, None, 10], "10"])
def test_a_bad_stride_is_a_422_that_says_what_to_send(stride: object) -> None:
    with pytest.raises(ApiError) as caught:
        decode({**BODY, "stride": stride})
    assert caught.value.status == 422 and "stride" in caught.value.message


def thinned(s: fx.Stream, stride: int, offset: int = 0, chunk: int = 7) -> RunEvaluator:
    """The same trajectory recorded one step in `stride` (from step `offset`), as a throttled watch() sends it."""
    rows = np.arange(offset, len(s.steps), stride)
    ev = RunEvaluator(s.layers)
    for lo in range(0, len(rows), chunk):
        r = rows[lo : lo + chunk]
        metrics = {name: values[r] for name, values in s.metrics.items()}
        ev.update(LogChunk(s.steps[r], s.loss[r], s.loss_logged[r], s.lr[r], metrics, np.full(len(r), stride)))
    return ev


@pytest.mark.parametrize("stride", [5, 10])
def test_a_throttled_run_gets_the_same_step_based_plateau(stride: int) -> None:
    """loss_plateau's patience (50 logged steps) and start are in steps: a stride neither delays nor moves them."""
    s = fx.plateau()
    full = RunEvaluator(s.layers)
    for chunk in s.chunks(50):
        full.update(chunk)
    (want,) = [f for f in full.findings() if f.rule == "loss_plateau"]
    (got,) = [f for f in thinned(s, stride).findings() if f.rule == "loss_plateau"]
    assert (got.step, got.severity) == (want.step, want.severity)
    assert want.last_step - stride < got.last_step <= want.last_step  # the last recorded step
    assert abs(got.evidence["plateau_steps"] - want.evidence["plateau_steps"]) < stride
    assert abs(got.evidence["logged_losses_since"] - want.evidence["logged_losses_since"]) <= 9 * stride


def spiky_stream(n: int = 2000, every: int = 150) -> fx.Stream:
    """Quiet gradient norms with a 100x spike every `every` steps (from step 300): separate episodes, 150 steps apart."""
    rng = np.random.default_rng(0)
    g = np.exp(rng.normal(0, 0.1, (n, 2)))
    g[300::every] *= 100
    steps = np.arange(n)
    loss = 1 + 0.01 * rng.random(n)
    return fx.Stream(["a", "b"], steps, loss, np.ones(n, bool), np.full(n, 0.1), {"grad_norm": g})


@pytest.mark.parametrize("stride", [5, 10])
def test_a_throttled_run_gets_the_same_spike_episodes(stride: int) -> None:
    """gradient_spike merges spikes less than 25 logged steps apart: steps, not records, at any stride."""
    s = spiky_stream()
    full = RunEvaluator(s.layers)
    for chunk in s.chunks(100):
        full.update(chunk)
    want = [(f.step, f.last_step) for f in full.findings() if f.rule == "gradient_spike"]
    got = [(f.step, f.last_step) for f in thinned(s, stride).findings() if f.rule == "gradient_spike"]
    assert len(want) > 1 and got == want  # the spikes fall on recorded steps (multiples of 150)


@cache
def run(name: str) -> fx.Stream:
    return {**fx.HEALTHY, **fx.PATHOLOGICAL}[name]()


def divergence(ev: RunEvaluator) -> list[tuple[str, int]]:
    return [(f.severity, f.step) for f in ev.findings() if f.rule == "loss_divergence"]


@pytest.mark.parametrize(("stride", "offset"), [(1, 0), (5, 0), (5, 3), (10, 0), (10, 5)])
def test_a_throttled_lr_jump_is_a_divergence_from_the_same_step(stride: int, offset: int) -> None:
    """Adam's lr jump lifts the loss back to chance: the level and noise windows span steps, not records, so
    one loss in 10 still clears the bar (51 losses 10 steps apart would count the whole early fall as noise)."""
    s = run("diverge_adam")
    full = RunEvaluator(s.layers)
    for chunk in s.chunks(50):
        full.update(chunk)
    ((severity, step),) = divergence(full)
    assert severity == "error" and fx.DIVERGE_AT <= step <= fx.DIVERGE_AT + 2
    ((got_severity, got_step),) = divergence(thinned(s, stride, offset))
    assert got_severity == "error" and step - stride < got_step < step + stride


@pytest.mark.parametrize("name", sorted(fx.HEALTHY))
def test_healthy_runs_recorded_one_step_in_10_stay_silent(name: str) -> None:
    for offset in (0, 5):
        found = thinned(run(name), 10, offset).findings()
        assert found == [], [(f.rule, f.severity, f.step, f.message[:100]) for f in found]


def test_a_throttled_divergence_streams_exactly() -> None:
    """The step windows keep their losses in the rule's state: any chunking gives the same state and findings."""
    s = run("diverge_adam")
    whole, chunked = thinned(s, 10, chunk=len(s.steps)), thinned(s, 10, chunk=3)
    assert whole.state()["rules"]["loss_divergence"] == chunked.state()["rules"]["loss_divergence"]
    assert divergence(whole) == divergence(chunked) != []


@pytest.mark.parametrize("offset", [0, 2])
def test_an_oscillation_recorded_at_an_odd_stride_is_still_an_alternation_of_the_records(offset: int) -> None:
    """oscillating_loss counts flips between consecutive records: one step in 5 still sees the period-2 swing,
    from the first recorded step, as a full record does from step 0."""
    found = [f for f in thinned(run("oscillation"), 5, offset).findings() if f.rule == "oscillating_loss"]
    assert [(f.severity, f.step) for f in found] == [("warning", offset)]


def restarted(s: fx.Stream, stride: int, chunk: int) -> RunEvaluator:
    """thinned(), but stored and restored after every chunk, as the service does per log batch."""
    rows = np.arange(0, len(s.steps), stride)
    state = None
    for lo in range(0, len(rows), chunk):
        r = rows[lo : lo + chunk]
        ev = RunEvaluator(s.layers, json.loads(json.dumps(state, allow_nan=False)) if state else None)
        metrics = {name: values[r] for name, values in s.metrics.items()}
        ev.update(LogChunk(s.steps[r], s.loss[r], s.loss_logged[r], s.lr[r], metrics, np.full(len(r), stride)))
        state = ev.state()  # raises ValueError when anything in it is not JSON (NaN, inf)
    return ev


@pytest.mark.parametrize("name", ["healthy_mlp_sgd", "diverge_adam", "nan_gradient"])
@pytest.mark.parametrize(("stride", "chunk"), [(2, 1), (5, 3), (10, 2)])
def test_small_first_batches_of_a_throttled_run_store_and_continue_exactly(name: str, stride: int, chunk: int) -> None:
    """A stride's loss level starts at the 3rd loss, its window noise at the 9th: a batch ending in between (watch()
    on a slow machine) once left a NaN noise in the stored state, and the service answered 500 to every retry."""
    s = run(name)
    whole, parts = thinned(s, stride, chunk=len(s.steps)), restarted(s, stride, chunk)
    assert parts.state() == whole.state()
    assert [f.model_dump() for f in parts.findings()] == [f.model_dump() for f in whole.findings()]
