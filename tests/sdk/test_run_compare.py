"""client.compare_runs() against a real `gradhealth serve`, sync and async; the comparison's HTML in headless
Chromium, where Tab and Space on a run's checkbox hide that run's lines and nothing else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradhealth.report import render_run_compare
from gradhealth.sdk import RunComparison
from gradhealth.sdk.errors import NotFoundError, UnprocessableEntityError

import gradhealth

from .cdp import Page
from .servers import Served
from .test_html_chromium import CHROMIUM, _count_color, _dom, _screenshot

LAYERS = [{"name": f"block.{i}", "type": "Linear", "num_parameters": 10} for i in range(3)]


def _batch(seq: int, steps: list[int], scale: float, bad_from: int | None) -> bytes:
    """One JSON batch: grad norms `scale` x (1 + layer/10), a falling loss; inf in block.2 from `bad_from`."""
    grad = [[scale * (1 + i / 10) for i in range(3)] for _ in steps]
    for row, step in enumerate(steps):
        if bad_from is not None and step >= bad_from:
            grad[row][2] = float("inf")
    nonfinite = [[float(g == float("inf")) for g in row] for row in grad]
    body = {"seq": seq, "steps": steps, "loss": [scale / (1 + 0.02 * s) for s in steps], "lr": [0.1] * len(steps)}
    body["metrics"] = {"grad_norm": grad, "nonfinite": nonfinite}
    return json.dumps(body).encode()


def _run(client: gradhealth.Client, name: str, steps: list[int], scale: float, bad_from: int | None = None) -> str:
    run = client.runs.create(name, LAYERS, metrics=["grad_norm", "nonfinite"])
    for seq, start in enumerate(range(0, len(steps), 100)):
        body = _batch(seq, steps[start : start + 100], scale, bad_from)
        client.runs.append(run.id, body, content_type="application/json")
    return run.id


@pytest.fixture(scope="module")
def key(served: Served) -> str:
    return served.admin("create-project", "run-compare").strip()


@pytest.fixture(scope="module")
def client(served: Served, key: str) -> Iterator[gradhealth.Client]:
    with gradhealth.Client(base_url=served.base_url, api_key=key) as c:
        yield c


@pytest.fixture(scope="module")
def run_ids(client: gradhealth.Client) -> list[str]:
    """A healthy run of 300 steps and one of 200 steps (every other step) that goes non-finite at step 240."""
    return [_run(client, "healthy", list(range(300)), 1.0), _run(client, "broken", list(range(0, 400, 2)), 3.0, 240)]


def test_compare_runs_sync_and_async(client: gradhealth.Client, served: Served, key: str, run_ids: list[str]) -> None:
    comparison = client.compare_runs(run_ids)
    assert isinstance(comparison, RunComparison)
    assert [r.name for r in comparison.runs] == ["healthy", "broken"] and comparison.bucket_steps == 1
    assert comparison.steps == sorted(set(range(300)) | set(range(0, 400, 2)))
    for run_id in run_ids:  # every aligned value is the run's own, fetched separately
        history = client.runs.history(run_id, "block.1")
        own = dict(zip(history["steps"], history["values"], strict=True))
        aligned = comparison.layers["block.1"][run_id]
        assert {s: v for s, v in zip(comparison.steps, aligned, strict=True) if v is not None} == own
    timing = {t.rule: t for t in comparison.rules}["non_finite"]
    assert timing.first_step == {run_ids[0]: None, run_ids[1]: 240} and timing.fired_in == 1
    assert comparison.runs[1].health in ("error", "critical") and comparison.runs[0].findings == []

    markdown = comparison.to_markdown()
    assert "| `non_finite` | – | 240 (" in markdown and "### broken" in markdown
    assert comparison.to_html().count('type="checkbox"') == 2 and "gh-run-compare" in comparison._repr_html_()
    small = client.runs.compare(run_ids, points=20)
    assert len(small.steps) == 20 and small.bucket_steps == 20 and small.max_points == 20

    async def compare_async() -> RunComparison:
        async with gradhealth.AsyncClient(base_url=served.base_url, api_key=key) as aclient:
            return await aclient.compare_runs(run_ids)

    assert asyncio.run(compare_async()) == comparison


def test_compare_runs_refuses_bad_ids(client: gradhealth.Client, served: Served, run_ids: list[str]) -> None:
    with pytest.raises(ValueError, match="2 to 8 runs"):
        client.compare_runs(run_ids[:1])  # refused before any request
    with pytest.raises(TypeError, match="list of run ids"):
        client.compare_runs(run_ids[0])  # type: ignore[arg-type]
    with pytest.raises(UnprocessableEntityError, match="name each run once"):
        client.compare_runs([run_ids[0], run_ids[0]])
    with pytest.raises(UnprocessableEntityError, match="run ids look like"):
        client.compare_runs([run_ids[0], "1; DROP TABLE training_runs"])
    other_key = served.admin("create-project", "run-compare-other").strip()
    with gradhealth.Client(base_url=served.base_url, api_key=other_key) as other:
        with pytest.raises(NotFoundError, match="no run with id"):
            other.compare_runs(run_ids)


_SHOWN = (
    "[...document.querySelectorAll('.gh-compare-charts .gh-run-{i}')]"
    ".filter(g => getComputedStyle(g).display !== 'none' && g.getBBox().width > 0).length"
)
_FOCUSED = "document.activeElement.getAttribute('class')"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_selector_hides_a_runs_lines_in_chromium(
    client: gradhealth.Client, run_ids: list[str], artifacts_dir: Path, tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    comparison = client.compare_runs(run_ids)
    charts = 3 + len(comparison.layers)  # loss, global norm, lr, one per layer
    page_file = artifacts_dir / "run_compare.html"
    page_file.write_text(comparison.to_html())
    url = page_file.resolve().as_uri()
    assert "gh-run-compare" in _dom(tmp_path, url)  # the real page, CSP and all: no console errors

    # Keyboard only, on the real page (its CSP forbids scripts: the selector is checkboxes and CSS).
    page = Page(CHROMIUM, tmp_path / "cdp-profile")
    try:
        page.open(url)

        def shown() -> list[int]:
            return [page.evaluate(_SHOWN.format(i=i)) for i in range(2)]

        assert shown() == [charts, charts]
        page.press("Tab")
        assert page.evaluate(_FOCUSED) == "gh-run-toggle gh-run-toggle-0"
        page.press("Tab")
        assert page.evaluate(_FOCUSED) == "gh-run-toggle gh-run-toggle-1"
        page.press(" ")
        assert page.evaluate("document.activeElement.checked") is False
        assert shown() == [charts, 0]  # run 1's lines and markers gone from every chart, run 0's kept
        page.press(" ")
        assert shown() == [charts, charts]
    finally:
        page.close()

    # The real page (CSP, no script): the unticked state is pure CSS, so the pixels of run 1's colour go.
    channels, rows = _screenshot(tmp_path, artifacts_dir / "run_compare.png", url)
    unticked = tmp_path / "unticked.html"
    unticked.write_text(
        comparison.to_html().replace('data-run="' + run_ids[1] + '" checked>', f'data-run="{run_ids[1]}">')
    )
    _, hidden = _screenshot(tmp_path, tmp_path / "unticked.png", unticked.resolve().as_uri())
    second, first = render_run_compare.RUN_COLORS[1], render_run_compare.RUN_COLORS[0]
    assert _count_color(rows, channels, second) > 300 and _count_color(hidden, channels, second) < 60  # swatches
    assert _count_color(hidden, channels, first) >= _count_color(rows, channels, first) > 100  # run 0 stays


def test_hostile_run_names_are_inert_in_html_and_markdown() -> None:
    """Run names come from whoever created the runs: escaped in HTML, kept to one table cell in Markdown."""
    from gradhealth.report import Finding
    from gradhealth.report.render_run_compare import compare_html, compare_markdown
    from gradhealth.report.run_compare import ComparedRun, rule_timings

    hostile = '<img src=x onerror="alert(1)">| x |\n# heading'
    finding = Finding(rule="non_finite", severity="error", title="NaN", message="m", step=0, confidence=1.0)
    runs = [
        ComparedRun(id=f"{i}" * 8, name=hostile, health="healthy", num_layers=1, run_steps=2, first_step=0,
                    last_step=1, dropped_steps=0, findings=[finding] if i else [])
        for i in range(2)
    ]  # fmt: skip
    comparison = RunComparison(
        runs=runs, steps=[0, 1], max_points=400, loss={r.id: [1.0, None] for r in runs}, rules=rule_timings(runs)
    )
    page = compare_html(comparison)
    assert "<img" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    markdown = compare_markdown(comparison)
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert [line.count(" | ") for line in table[:3]] == [4, 4, 4]  # the runs table: a name stays in its cell
    assert "\n# heading" not in markdown and "| `non_finite` | – | 0 (error) |  |" in markdown
