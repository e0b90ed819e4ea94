"""GET /v1/runs/compare over the real stack: runs of different lengths and strides aligned by step, checked
against each run's own history; rule timings; bounds; hostile ids; another project's runs stay invisible."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from .conftest import Stack, admin
from .test_runs_api import LAYERS, batch_body, post_logs

NONFINITE_LAYER = 1


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.key}"}, timeout=60) as client:
        yield client


def _run(http: httpx.Client, name: str, steps: list[int], bad_from: int | None = None) -> dict[str, Any]:
    """A run logging `steps` in batches of 50; from step `bad_from` on, net.1's gradient is non-finite."""
    run = http.post("/v1/runs", json={"name": name, "layers": LAYERS}).json()
    sent: dict[int, dict[str, Any]] = {}
    for seq, start in enumerate(range(0, len(steps), 50)):
        chunk = steps[start : start + 50]
        body = batch_body(seq, 0, len(chunk), seed=seq + len(name))
        body["steps"] = chunk
        body["loss"] = [2.0 / (1 + 0.01 * s) + 0.1 * len(name) for s in chunk]
        for row, step in enumerate(chunk):
            if bad_from is not None and step >= bad_from:
                body["metrics"]["grad_norm"][row][NONFINITE_LAYER] = float("inf")
                body["metrics"]["nonfinite"][row][NONFINITE_LAYER] = 1.0
            sent[step] = {"loss": body["loss"][row], "grad": [body["metrics"]["grad_norm"][row][i] for i in range(4)]}
        ack = post_logs(http, run["id"], body)
        assert ack.status_code == 200, ack.text
    run["sent"] = sent
    return run


@pytest.fixture(scope="module")
def runs(http: httpx.Client) -> list[dict[str, Any]]:
    """Three runs: 300 steps from 0; every 2nd step of 0..398, bad from 150; steps 50..249, bad from 100."""
    return [
        _run(http, "a", list(range(300))),
        _run(http, "bb", list(range(0, 400, 2)), bad_from=150),
        _run(http, "ccc", list(range(50, 250)), bad_from=100),
    ]


def _close(actual: list[float | None], expected: list[float | None], rel: float) -> None:
    """Equal nulls, numbers within rel."""
    assert [v is None for v in actual] == [v is None for v in expected]
    assert [v for v in actual if v is not None] == pytest.approx([v for v in expected if v is not None], rel=rel)


def _compare(http: httpx.Client, ids: list[str], **params: Any) -> dict[str, Any]:
    response = http.get("/v1/runs/compare", params={"ids": ",".join(ids), **params})
    assert response.status_code == 200, response.text
    return response.json()


def _history(http: httpx.Client, run_id: str, layer: str) -> dict[int, float | None]:
    body = http.get(f"/v1/runs/{run_id}/layers/{layer}/history", params={"metric": "grad_norm"}).json()
    return dict(zip(body["steps"], body["values"], strict=True))


def test_runs_aligned_by_step_match_their_own_histories(http: httpx.Client, runs: list[dict[str, Any]]) -> None:
    ids = [run["id"] for run in runs]
    body = _compare(http, ids)
    assert [r["id"] for r in body["runs"]] == ids and [r["name"] for r in body["runs"]] == ["a", "bb", "ccc"]
    union = sorted({s for run in runs for s in run["sent"]})
    assert body["steps"] == union and body["bucket_steps"] == 1  # 0..399 is 400 steps: one point each
    for run in runs:
        sent = run["sent"]
        loss = body["loss"][run["id"]]
        assert len(loss) == len(union)
        for step, value in zip(union, loss, strict=True):
            if step in sent:
                assert value == pytest.approx(sent[step]["loss"], rel=1e-12)
            else:
                assert value is None  # the run logged nothing at this step
        ggn = body["global_grad_norm"][run["id"]]
        for step, value in zip(union, ggn, strict=True):
            if step not in sent:
                assert value is None
            elif any(math.isinf(g) for g in sent[step]["grad"]):
                assert value is None  # non-finite: null in JSON
            else:
                expected = math.sqrt(sum(float(np.float32(g)) ** 2 for g in sent[step]["grad"]))
                assert value == pytest.approx(expected, rel=1e-6)
        assert set(body["layers"]) == {layer["name"] for layer in LAYERS}
        for layer in body["layers"]:
            history = _history(http, run["id"], layer)  # the run's own series, fetched separately
            aligned = body["layers"][layer][run["id"]]
            assert [s for s, v in zip(union, aligned, strict=True) if v is not None] == [
                s for s in union if history.get(s) is not None
            ]
            for step, value in zip(union, aligned, strict=True):
                if value is not None:
                    assert value == pytest.approx(history[step], rel=1e-7)


def test_rule_timings_and_findings_per_run(http: httpx.Client, runs: list[dict[str, Any]]) -> None:
    ids = [run["id"] for run in runs]
    body = _compare(http, ids)
    for run, compared in zip(runs, body["runs"], strict=True):
        report = http.get(f"/v1/runs/{run['id']}/report").json()
        assert compared["findings"] == report["findings"] and compared["health"] == report["health"]
    timing = {t["rule"]: t for t in body["rules"]}["non_finite"]
    assert timing["first_step"] == {ids[0]: None, ids[1]: 150, ids[2]: 100}
    assert timing["fired_in"] == 2 and timing["spread"] == 50
    assert timing["severity"][ids[0]] is None and timing["severity"][ids[1]] in ("error", "critical")
    earliest = [min((s for s in t["first_step"].values() if s is not None), default=2**63) for t in body["rules"]]
    assert earliest == sorted(earliest)  # the rule that fired first in any run comes first

    markdown = http.get("/v1/runs/compare", params={"ids": ids, "format": "markdown"})
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")
    assert "| `non_finite` | – | 150 (" in markdown.text and "| 50 |" in markdown.text
    html = http.get("/v1/runs/compare", params={"ids": ids, "format": "html"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "<script" not in html.text and html.text.count('type="checkbox"') == 3
    assert html.text.count('class="gh-run gh-run-2"') == 3 + len(LAYERS)  # loss, global norm, lr + per layer


def test_downsampled_axis_keeps_each_bucket_maximum(http: httpx.Client, runs: list[dict[str, Any]]) -> None:
    ids = [runs[0]["id"], runs[1]["id"]]
    body = _compare(http, ids, points=50)
    first, span = 0, 399 - 0 + 1  # the union of both runs: steps 0..398
    assert len(body["steps"]) == 50 and body["bucket_steps"] == 8 and body["max_points"] == 50
    assert body["steps"] == [first + math.ceil(b * span / 50) for b in range(50)]
    for run in runs[:2]:
        history = _history(http, run["id"], "net.0")
        buckets: dict[int, list[float]] = {}
        for step, value in history.items():
            buckets.setdefault((step - first) * 50 // span, []).append(value)  # type: ignore[arg-type]
        expected = [max(buckets[b]) if b in buckets else None for b in range(50)]
        _close(body["layers"]["net.0"][run["id"]], expected, 1e-7)
        losses: dict[int, list[float]] = {}
        for step, sent in run["sent"].items():
            losses.setdefault((step - first) * 50 // span, []).append(sent["loss"])
        mean = [sum(losses[b]) / len(losses[b]) if b in losses else None for b in range(50)]
        _close(body["loss"][run["id"]], mean, 1e-9)
    assert body["loss"][runs[0]["id"]][-1] is None  # run a stops at step 299; the last bucket is run bb's alone


@pytest.mark.parametrize(
    ("ids", "needle"),
    [
        (["{a}"], "compare 2 to 8 runs at a time; got 1 ids"),
        (["{a}", "{a}"], "name each run once; repeated"),
        (["{a}"] * 1000, "compare 2 to 8 runs at a time; got 1000 ids"),
        (["{a}", "../../etc/passwd"], "run ids look like"),
        (["{a}", "' OR 1=1 --"], "run ids look like"),
        (["{a}", "x" * 5000], "run ids look like"),
        (["{a}", "{B}"], "run ids look like"),  # upper case
        ([], "compare 2 to 8 runs at a time; got 0 ids"),
    ],
)
def test_bad_ids_are_422_saying_what_to_fix(
    http: httpx.Client, runs: list[dict[str, Any]], ids: list[str], needle: str
) -> None:
    filled = [i.format(a=runs[0]["id"], B=runs[1]["id"].upper()) for i in ids]
    response = http.get("/v1/runs/compare", params={"ids": ",".join(filled)} if filled else {"ids": ""})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error" and needle in error["message"], error
    assert "x" * 100 not in error["message"]  # a hostile id is not echoed in full


def test_another_projects_run_reads_as_missing(http: httpx.Client, stack: Stack, runs: list[dict[str, Any]]) -> None:
    other_key = admin(stack.env, "create-project", "compare-other").stdout.strip()
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        theirs = other.post("/v1/runs", json={"name": "theirs", "layers": LAYERS}).json()["id"]
        foreign = other.get("/v1/runs/compare", params={"ids": [runs[0]["id"], runs[1]["id"]]})
        assert foreign.status_code == 404
    unknown = "00000000-0000-4000-8000-000000000000"
    mixed = http.get("/v1/runs/compare", params={"ids": [runs[0]["id"], theirs]})
    missing = http.get("/v1/runs/compare", params={"ids": [runs[0]["id"], unknown]})
    assert mixed.status_code == missing.status_code == 404
    assert mixed.json()["error"]["message"] == f"no run with id {theirs!r} in this project"
    assert missing.json()["error"]["message"] == f"no run with id {unknown!r} in this project"
    assert http.get("/v1/runs/compare", params={"ids": [runs[0]["id"], runs[1]["id"]], "points": 5}).status_code == 422


def test_openapi_documents_the_comparison(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    operation = doc["paths"]["/v1/runs/compare"]["get"]
    ok = operation["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/RunComparison"}
    assert {"text/markdown; charset=utf-8", "text/html; charset=utf-8"} <= set(ok)
    assert {"404", "422"} <= set(operation["responses"])
    assert {p["name"] for p in operation["parameters"]} == {"ids", "points", "format"}
    schemas = doc["components"]["schemas"]
    assert {"RunComparison", "ComparedRun", "RuleTiming"} <= set(schemas)
