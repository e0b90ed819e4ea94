"""Report comparison: what changed from a baseline analysis to a newer one (the SDK's Report.compare)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from gradhealth.report import Comparison, Report, compare_reports
from gradhealth.store.db import session_factory
from gradhealth.store.keys import Principal
from gradhealth.store.settings import Settings

from ..deps import ReadAccess, SettingsDep
from ..openapi import error_responses
from ..resources import finished_report_json

router = APIRouter(prefix="/reports", tags=["reports"])


def finished_report(settings: Settings, analysis_id: str, principal: Principal) -> Report:
    """The report of a succeeded analysis of this project; 404 if not ours, 409 if not finished."""
    with session_factory(settings)() as session:
        return Report.model_validate_json(finished_report_json(session, analysis_id, principal))


@router.get("/{baseline_id}/compare/{analysis_id}", response_model=Comparison, responses=error_responses(409))
async def compare(baseline_id: str, analysis_id: str, principal: ReadAccess, settings: SettingsDep) -> Comparison:
    """Compare analysis `analysis_id` with the baseline `baseline_id`: new, resolved, changed findings,
    per-layer changes beyond tolerance, and whether it regressed."""
    before = await run_in_threadpool(finished_report, settings, baseline_id, principal)
    after = await run_in_threadpool(finished_report, settings, analysis_id, principal)
    return await run_in_threadpool(compare_reports, after, before)
