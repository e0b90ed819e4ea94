"""Distributions over time: sketches equal torch.quantile, travel to a real service, come back in the report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradhealth.diagnostics.sketch import RANK_ERROR
from gradhealth.sdk.watching import watch
from gradhealth.sdk.watching._budget import RESERVE
from gradhealth.sdk.watching._sketch import CEILING, MAX_EXACT, QUANTILES, SketchSchedule, sketch
from torch import nn

import gradhealth

from .servers import Served

Q = torch.tensor(QUANTILES, dtype=torch.float64)


def test_a_sketch_is_torch_quantile_of_the_finite_values_and_exact_counts() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(37, 5, generator=generator)
    a[0, :3] = 0.0
    b = torch.randn(11, generator=generator)
    b[4], b[5], b[6] = float("nan"), float("inf"), 0.0
    got = sketch([a, b]).double()
    flat = torch.cat([a.reshape(-1), b]).double()
    finite = flat[torch.isfinite(flat)]
    assert torch.allclose(got[:9], torch.quantile(finite, Q), rtol=1e-6, atol=1e-7)
    assert got[9:].tolist() == [4.0, 2.0, float(flat.numel())]  # zeros, non-finite, count


def test_no_finite_value_has_no_quantiles_and_an_empty_layer_counts_zero() -> None:
    got = sketch([torch.full((4,), float("nan"))])
    assert torch.isnan(got[:9]).all() and got[9:].tolist() == [0.0, 4.0, 4.0]
    assert sketch([]).tolist()[9:] == [0.0, 0.0, 0.0]


def test_a_large_layer_is_sampled_within_the_stated_rank_error() -> None:
    """Over MAX_EXACT values: each quantile's rank in the full tensor is within RANK_ERROR (DKW at 1 - 1e-6)."""
    values = torch.randn(2 * MAX_EXACT, generator=torch.Generator().manual_seed(1))
    got = sketch([values], generator=torch.Generator().manual_seed(2))
    ordered = torch.sort(values).values
    for level, quantile in zip(QUANTILES[1:-1], got[1:8].tolist(), strict=True):
        rank = torch.searchsorted(ordered, torch.tensor(quantile)).item() / values.numel()
        assert abs(rank - level) <= RANK_ERROR, (level, rank)
    assert got[0] == values.min() and got[8] == values.max()  # the extremes are exact
    assert got[9:].tolist() == [0.0, 0.0, float(values.numel())]


def test_the_stride_follows_the_cost_within_what_recording_leaves_of_the_budget() -> None:
    schedule = SketchSchedule(True, 0.03 / (1 - RESERVE))  # a budget that leaves 3% to the measured costs
    assert not schedule.due(0, plain_step=None)  # nothing measured yet: no sketch
    assert schedule.due(0, plain_step=0.1)
    # 2 ms per sketch, 100 ms steps, recording takes 2% of them: 1 ms per step is left -> 2 steps, the floor is 10
    schedule.took(0, 0.002, plain_step=0.100, recording=0.02)
    assert schedule.stride == 10
    schedule.took(10, 0.05, plain_step=0.100, recording=0.02)
    schedule.took(20, 0.05, plain_step=0.100, recording=0.02)  # median of (2, 50, 50) ms: 50 ms / 1 ms -> 50 steps
    assert schedule.stride == 50 and not schedule.due(69, 0.1) and schedule.due(70, 0.1)
    schedule.took(70, 0.05, plain_step=0.100, recording=0.03)  # recording takes all it may: nothing is left
    assert schedule.stride == CEILING
    schedule = SketchSchedule(7, 0.03)
    schedule.took(0, 1.0, plain_step=0.010, recording=0.0)
    assert schedule.stride == 7  # a fixed stride stays
    with pytest.raises(ValueError, match="stride"):
        SketchSchedule(0, 0.03)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[gradhealth.Client]:
    with gradhealth.Client(base_url=served.base_url, api_key=served.admin("create-project", "dist").strip()) as c:
        yield c


def _train(client: gradhealth.Client, steps: int = 30) -> tuple[Any, dict[int, list[list[float]]]]:
    """A small MLP watched with distributions every 5 steps; the test's own quantiles of layer 0's grads."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 6), torch.randn(64, 1)
    expected: dict[int, list[list[float]]] = {}
    with watch(
        model, opt, run="dist", client=client, budget=None, distributions=5, activations=5, flush_interval=0.2
    ) as handle:
        for step in range(steps):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            if step % 5 == 0:
                grads = torch.cat([model[0].weight.grad.reshape(-1), model[0].bias.grad]).double()
                weights = torch.cat([model[0].weight.detach().reshape(-1), model[0].bias.detach()]).double()
                expected[step] = [torch.quantile(grads, Q).tolist(), torch.quantile(weights, Q).tolist()]
            opt.step()
    return handle, expected


def test_sketches_reach_the_report_as_band_charts_and_markdown(client: gradhealth.Client) -> None:
    handle, expected = _train(client)
    report = handle.report()
    dist = report.timeline.distributions["0"]
    assert dist.steps == sorted(expected) and dist.quantiles == list(QUANTILES)
    for row, step in enumerate(dist.steps):
        assert np.allclose(dist.grad[row], expected[step][0], rtol=1e-5, atol=1e-7)
        assert np.allclose(dist.weight[row], expected[step][1], rtol=1e-5, atol=1e-7)
    assert dist.count == [16 * 6 + 16.0] * len(dist.steps)
    html = report.to_html()
    assert html.count("gh-dist-chart") >= 4 and html.count('class="gh-band"') >= 16  # 2 layers x 2 kinds x 4 bands
    markdown = report.to_markdown()
    assert "## Distributions" in markdown and "| `0` | 6 |" in markdown
    relu = report.timeline.activations["1"]
    assert relu.kind == "relu" and relu.steps == dist.steps and all(0 <= v <= 1 for v in relu.dead)
    assert "## Activations" in markdown and "| `1` | relu |" in markdown


BAD_EXTRAS = [
    ({"distributions": {"steps": [9], "grad": [[[0.0] * 12] * 2]}}, "each one of the batch's steps"),
    ({"distributions": {"steps": [0], "grad": [[[0.0] * 11] * 2]}}, "expected (1, 2, 12)"),
    ({"distributions": {"steps": [0], "grad": [[[1e999] + [0.0] * 11] * 2]}}, "finite values"),
    ({"distributions": {"steps": [0], "grad": [[[0.0] * 9 + [-1.0, 0.0, 4.0]] * 2]}}, "counts >= 0"),
    ({"distributions": {"steps": [0], "shape": 1}}, "an object with steps"),
    ({"distributions": [1, 2]}, "an object with steps"),
    ({"activations": {"steps": [0], "dead": [[0.5]]}}, "declared no activations"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_EXTRAS)
def test_malformed_extras_are_422_saying_what_to_fix(
    client: gradhealth.Client, served: Served, extra: dict[str, Any], message: str
) -> None:
    run = client.runs.create("bad", [{"name": "a"}, {"name": "b"}])
    body = {"seq": 0, "steps": [0], "metrics": {"grad_norm": [[1.0, 1.0]]}, **extra}
    headers = {"Authorization": f"Bearer {client.api_key}", "Content-Type": "application/json"}
    answer = httpx.post(f"{served.base_url}/v1/runs/{run.id}/logs", content=json.dumps(body), headers=headers)
    assert answer.status_code == 422 and message in answer.text, answer.text


def test_declared_activations_are_checked_and_fractions_bounded(client: gradhealth.Client, served: Served) -> None:
    headers = {"Authorization": f"Bearer {client.api_key}"}
    bad = {"name": "r", "layers": [{"name": "a"}], "config": {"activations": [{"name": "x"}]}}
    answer = httpx.post(f"{served.base_url}/v1/runs", json=bad, headers=headers)
    assert answer.status_code == 422 and "config.activations" in answer.text
    good = {**bad, "config": {"activations": [{"name": "act", "kind": "relu"}]}}
    run_id = httpx.post(f"{served.base_url}/v1/runs", json=good, headers=headers).json()["id"]
    body = {"seq": 0, "steps": [0], "activations": {"steps": [0], "dead": [[1.5]]}}
    answer = httpx.post(f"{served.base_url}/v1/runs/{run_id}/logs", json=body, headers=headers)
    assert answer.status_code == 422 and "fractions from 0 to 1" in answer.text
