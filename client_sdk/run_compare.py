"""The SDK's RunComparison: several runs on one step axis (GET /v1/runs/compare), rendered like a Report."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from gradhealth.report.run_compare import MAX_RUNS, MIN_RUNS
from gradhealth.report.run_compare import RunComparison as EngineRunComparison
from pydantic import ConfigDict

from ._base import RequestOptions
from .types import Run


class RunComparison(EngineRunComparison):
    """Runs aligned by step: overlaid series, findings per run, when each rule first fired; renders itself."""

    model_config = ConfigDict(json_schema_extra={"description": inspect.cleandoc(EngineRunComparison.__doc__ or "")})

    def __repr__(self) -> str:
        runs = ", ".join(f"{r.name}:{r.health}" for r in self.runs)
        return f"RunComparison(runs=[{runs}], points={len(self.steps)}, rules={[t.rule for t in self.rules]})"

    def to_markdown(self) -> str:
        """Markdown for terminals and CI summaries: the runs, rule timings and each run's findings."""
        from gradhealth.report.render_run_compare import compare_markdown

        return compare_markdown(self)

    def to_html(self) -> str:
        """A self-contained, script-free HTML page: overlaid charts with a checkbox per run to show or hide it."""
        from gradhealth.report.render_run_compare import compare_html

        return compare_html(self)

    def _repr_html_(self) -> str:
        """Jupyter shows the comparison itself, its CSS scoped to the fragment."""
        from gradhealth.report.render_run_compare import compare_html_fragment

        return compare_html_fragment(self)


def compare_options(run_ids: Sequence[str | Run], points: int | None) -> RequestOptions:
    """GET /v1/runs/compare for these ids; a wrong count fails here, before any request."""
    if isinstance(run_ids, str):
        raise TypeError("run_ids must be a list of run ids, not one string")
    ids = [run.id if isinstance(run, Run) else str(run) for run in run_ids]
    if not MIN_RUNS <= len(ids) <= MAX_RUNS:
        raise ValueError(f"compare {MIN_RUNS} to {MAX_RUNS} runs at a time; got {len(ids)}")
    params: dict[str, str | int] = {"ids": ",".join(ids)}
    if points is not None:
        params["points"] = points
    return RequestOptions("GET", "/v1/runs/compare", params=params)
