"""Report comparison: what changed from a baseline analysis to a newer one (the SDK's Report.compare)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from gradhealth.report import Comparison, Report, compare_reports
from gradhealth.store.db import session_factory
from gradhealth.store.keys import Principal
from gradhealth.store.models import Analysis, StoredReport
from gradhealth.store.settings import Settings

from ..deps import ReadAccess, SettingsDep
from ..errors import ApiError
from ..openapi import error_responses
from ..resources import get_owned

router = APIRouter(prefix="/reports", tags=["reports"])


def finished_report(settings: Settings, analysis_id: str, principal: Principal) -> Report:
    """The report of a succeeded analysis of this project; 404 if not ours, 409 if not finished."""
    with session_factory(settings)() as session:
        row = get_owned(session, Analysis, analysis_id, principal, "analysis")
        stored = session.get(StoredReport, analysis_id) if row.status == "succeeded" else None
        if stored is None:
            state = f"failed ({row.error_message})" if row.status == "failed" else row.status
            raise ApiError(
                409,
                f"analysis {analysis_id} is {state}, so it has no report to compare; "
                "compare two analyses whose status is succeeded",
                code="not_ready",
            )
        return Report.model_validate_json(stored.body)


@router.get("/{baseline_id}/compare/{analysis_id}", response_model=Comparison, responses=error_responses(409))
async def compare(baseline_id: str, analysis_id: str, principal: ReadAccess, settings: SettingsDep) -> Comparison:
    """Compare analysis `analysis_id` with the baseline `baseline_id`: new, resolved, changed findings,
    per-layer changes beyond tolerance, and whether it regressed."""
    before = await run_in_threadpool(finished_report, settings, baseline_id, principal)
    after = await run_in_threadpool(finished_report, settings, analysis_id, principal)
    return await run_in_threadpool(compare_reports, after, before)
