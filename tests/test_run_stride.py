"""The recording stride on the wire: decoded from JSON and msgpack, and rules count steps, not records, with it."""

from __future__ import annotations

import json

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


def thinned(s: fx.Stream, stride: int) -> RunEvaluator:
    """The same trajectory recorded one step in `stride`, as a throttled watch() sends it."""
    rows = np.arange(0, len(s.steps), stride)
    ev = RunEvaluator(s.layers)
    for lo in range(0, len(rows), 7):
        r = rows[lo : lo + 7]
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
