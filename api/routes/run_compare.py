"""GET /v1/runs/compare: 2 to 8 runs of this project on one step axis (registered before /runs/{run_id})."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from gradhealth.report.render_run_compare import compare_html, compare_markdown
from gradhealth.report.run_compare import MAX_RUNS, MIN_RUNS, RunComparison
from gradhealth.store import run_compare as stored
from gradhealth.store.db import session_factory
from gradhealth.store.keys import Principal
from gradhealth.store.run_report import MAX_POINTS
from gradhealth.store.settings import Settings

from ..deps import ReadAccess, SettingsDep
from ..errors import ApiError
from ..openapi import error_responses

router = APIRouter(prefix="/runs", tags=["runs"])

CompareFormat = Literal["json", "markdown", "html"]
MEDIA = {"json": "application/json", "markdown": "text/markdown; charset=utf-8", "html": "text/html; charset=utf-8"}
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
IDS_HELP = f"{MIN_RUNS} to {MAX_RUNS} distinct run ids, comma-separated (ids=a,b) or repeated (ids=a&ids=b)"


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def parse_ids(raw: list[str]) -> list[str]:
    """The run ids asked for, in order; 422 saying what to fix when too few, too many, repeated or malformed."""
    ids = [part.strip() for value in raw for part in value.split(",") if part.strip()]
    if not MIN_RUNS <= len(ids) <= MAX_RUNS:
        raise ApiError(422, f"ids: compare {MIN_RUNS} to {MAX_RUNS} runs at a time; got {len(ids)} ids")
    malformed = [i for i in ids if not RUN_ID.fullmatch(i)]
    if malformed:
        shown = ", ".join(_shown(i) for i in malformed[:3])
        raise ApiError(422, f"ids: run ids look like 'd2f1c9e4-5b7a-4c3e-9f61-0a8b7c6d5e4f'; got {shown}")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ApiError(422, f"ids: name each run once; repeated {', '.join(map(repr, repeated))}")
    return ids


def _compare(settings: Settings, principal: Principal, ids: list[str], points: int) -> RunComparison:
    with session_factory(settings)() as session:
        runs, missing = stored.owned_runs(session, principal.project_id, ids)
        if missing:  # another project's run reads exactly like one that does not exist
            raise ApiError(404, f"no run with id {missing[0]!r} in this project")
        return stored.compare_runs(session, runs, points)


@router.get(
    "/compare",
    responses={
        200: {"model": RunComparison, "content": {MEDIA["markdown"]: {}, MEDIA["html"]: {}}},
        **error_responses(404),
    },
)
async def compare_runs(
    principal: ReadAccess,
    settings: SettingsDep,
    ids: Annotated[list[str], Query(description=IDS_HELP)],
    points: Annotated[int, Query(ge=10, le=1000, description="most points per series (downsampled beyond)")] = (
        MAX_POINTS
    ),
    format: CompareFormat = "json",
) -> Response:
    """Runs side by side on one step axis: overlaid series, findings per run, when each rule first fired."""
    comparison = await run_in_threadpool(_compare, settings, principal, parse_ids(ids), points)
    if format == "json":
        body = comparison.model_dump_json()
    else:
        body = compare_markdown(comparison) if format == "markdown" else compare_html(comparison)
    return Response(body.encode(), media_type=MEDIA[format])
