"""`client.analyses`: create, retrieve, list, wait and read reports (sync and async)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import httpx
from gradhealth.diagnostics.options import OptimizerSpec
from gradhealth.report import Comparison

from ._base import RequestOptions, parse_retry_after
from ._constants import DEFAULT_WAIT_TIMEOUT, POLL_INITIAL_INTERVAL, POLL_MAX_INTERVAL, RETRY_STATUSES
from .errors import APIConnectionError, InternalServerError, RateLimitError, WaitTimeoutError
from .pagination import AsyncPage, SyncPage, async_pages, sync_pages
from .report import Report
from .types import Analysis, AnalysisStatus, ReportFormat

if TYPE_CHECKING:
    from ._base import AsyncAPIClient, SyncAPIClient

# A 409 from the report endpoint means "not finished" or "failed": wait() decides, blind retries don't.
REPORT_RETRY_STATUSES = RETRY_STATUSES - {409}
# While waiting, a restarting or overloaded server is not a reason to give up before the deadline.
TRANSIENT_WAIT_ERRORS = (APIConnectionError, InternalServerError, RateLimitError)
OptimizerArg = OptimizerSpec | dict[str, Any] | None
ProgressCallback = Callable[[Analysis], None]
# Per-check settings sent as they are (the server validates them): top_eigenvalues, trace_probes (curvature),
# verify_steps, verify_max_trials (verify); see docs/sdk.md.
CheckSettings = Mapping[str, int]
CHECK_SETTINGS = ("top_eigenvalues", "trace_probes", "verify_steps", "verify_max_trials")


def create_body(
    model_id: str,
    batch_id: str | None,
    loss: str | None,
    optimizer: OptimizerArg,
    precision: str,
    checks: Sequence[str],
    batch_ids: Sequence[str] | None = None,
    check_settings: CheckSettings | None = None,
) -> dict[str, Any]:
    """The POST /v1/analyses body; unset options are left to the server's defaults; one batch as batch_id."""
    if (batch_id is None) == (batch_ids is None):
        raise ValueError("pass batch_id or batch_ids, not both and not neither")
    ids = [batch_id] if batch_id is not None else list(batch_ids or [])
    body: dict[str, Any] = {"model_id": model_id, "precision": precision}
    body.update({"batch_id": ids[0]} if len(ids) == 1 else {"batch_ids": ids})
    body["checks"] = [checks] if isinstance(checks, str) else list(checks)
    unknown = sorted(set(check_settings or {}) - set(CHECK_SETTINGS))
    if unknown:
        raise ValueError(f"unknown check setting(s) {', '.join(unknown)}; use: {', '.join(CHECK_SETTINGS)}")
    body.update(check_settings or {})
    if loss is not None:
        body["loss"] = loss
    if isinstance(optimizer, OptimizerSpec):
        body["optimizer"] = optimizer.model_dump(mode="json")
    elif optimizer is not None:
        body["optimizer"] = dict(optimizer)
    return body


def _report_options(analysis_id: str, format: str) -> RequestOptions:
    return RequestOptions(
        "GET", f"/v1/analyses/{analysis_id}/report", params={"format": format}, retry_statuses=REPORT_RETRY_STATUSES
    )


def _compare_options(baseline_id: str, analysis_id: str) -> RequestOptions:
    return RequestOptions(
        "GET", f"/v1/reports/{baseline_id}/compare/{analysis_id}", retry_statuses=REPORT_RETRY_STATUSES
    )


def _parse_report(response: httpx.Response, format: str) -> Report | str:
    return Report.model_validate_json(response.content) if format == "json" else response.text


class _Poll:
    """Deadline and interval bookkeeping for wait(): grows the interval, prefers the server's hint."""

    def __init__(self, timeout: float, poll_interval: float | None) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.fixed = poll_interval
        self.interval = poll_interval or POLL_INITIAL_INTERVAL

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def next_delay(self, hint: float | None) -> float:
        delay = hint if hint is not None and 0 < hint <= POLL_MAX_INTERVAL * 4 else self.interval
        if self.fixed is None:
            self.interval = min(self.interval * 1.5, POLL_MAX_INTERVAL)
        return max(0.0, min(delay, self.deadline - time.monotonic()))


class Analyses:
    """Analyses of an uploaded model on an uploaded batch."""

    def __init__(self, client: SyncAPIClient) -> None:
        self._client = client

    def create(
        self,
        *,
        model_id: str,
        batch_id: str | None = None,
        batch_ids: Sequence[str] | None = None,
        loss: str | None = None,
        optimizer: OptimizerArg = None,
        precision: str = "fp32",
        checks: Sequence[str] = ("standard",),
        check_settings: CheckSettings | None = None,
        idempotency_key: str | None = None,
    ) -> Analysis:
        """Queue an analysis of one batch (batch_id) or several (batch_ids, merged); follow it with wait()."""
        body = create_body(model_id, batch_id, loss, optimizer, precision, checks, batch_ids, check_settings)
        options = RequestOptions("POST", "/v1/analyses", json=body, idempotency_key=idempotency_key)
        return Analysis.model_validate(self._client.request(options).json())

    def retrieve(self, analysis_id: str) -> Analysis:
        """Status, progress and, when failed, the error."""
        return self._client._get(f"/v1/analyses/{analysis_id}", Analysis)

    def compare(self, baseline_id: str, analysis_id: str) -> Comparison:
        """The server's comparison of two succeeded analyses (same as Report.compare, without downloads)."""
        return Comparison.model_validate(self._client.request(_compare_options(baseline_id, analysis_id)).json())

    def list(self, *, status: AnalysisStatus | None = None, limit: int = 50) -> SyncPage[Analysis]:
        """This project's analyses, newest first; iterating the page walks every later page too."""
        filters = {"status": status} if status else None
        return sync_pages(self._client, "/v1/analyses", Analysis.model_validate, limit, filters)

    def wait(
        self,
        analysis_id: str,
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
        poll_interval: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Analysis:
        """Poll until succeeded or failed (a failed analysis is returned as is); WaitTimeoutError after timeout."""
        poll = _Poll(timeout, poll_interval)
        last: Analysis | None = None
        while True:
            hint = None
            try:
                response = self._client.request(RequestOptions("GET", f"/v1/analyses/{analysis_id}"))
                last, hint = Analysis.model_validate(response.json()), parse_retry_after(response.headers)
                if on_progress is not None:
                    on_progress(last)
                if last.done:
                    return last
            except TRANSIENT_WAIT_ERRORS:
                if poll.expired():
                    raise
            if poll.expired() and last is not None:
                raise WaitTimeoutError(last, timeout)
            self._client.sleep(poll.next_delay(hint))

    @overload
    def report(self, analysis_id: str, *, format: Literal["json"] = "json") -> Report: ...
    @overload
    def report(self, analysis_id: str, *, format: Literal["markdown", "html", "junit"]) -> str: ...
    def report(self, analysis_id: str, *, format: ReportFormat = "json") -> Report | str:
        """The report (ConflictError 409 until the analysis succeeded); json gives a Report, others text."""
        return _parse_report(self._client.request(_report_options(analysis_id, format)), format)


class AsyncAnalyses:
    """Analyses of an uploaded model on an uploaded batch (async)."""

    def __init__(self, client: AsyncAPIClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        model_id: str,
        batch_id: str | None = None,
        batch_ids: Sequence[str] | None = None,
        loss: str | None = None,
        optimizer: OptimizerArg = None,
        precision: str = "fp32",
        checks: Sequence[str] = ("standard",),
        check_settings: CheckSettings | None = None,
        idempotency_key: str | None = None,
    ) -> Analysis:
        """Queue an analysis of one batch (batch_id) or several (batch_ids, merged); follow it with wait()."""
        body = create_body(model_id, batch_id, loss, optimizer, precision, checks, batch_ids, check_settings)
        options = RequestOptions("POST", "/v1/analyses", json=body, idempotency_key=idempotency_key)
        return Analysis.model_validate((await self._client.request(options)).json())

    async def retrieve(self, analysis_id: str) -> Analysis:
        """Status, progress and, when failed, the error."""
        return await self._client._get(f"/v1/analyses/{analysis_id}", Analysis)

    async def compare(self, baseline_id: str, analysis_id: str) -> Comparison:
        """The server's comparison of two succeeded analyses (same as Report.compare, without downloads)."""
        response = await self._client.request(_compare_options(baseline_id, analysis_id))
        return Comparison.model_validate(response.json())

    async def list(self, *, status: AnalysisStatus | None = None, limit: int = 50) -> AsyncPage[Analysis]:
        """This project's analyses, newest first; `async for` walks every later page too."""
        filters = {"status": status} if status else None
        return await async_pages(self._client, "/v1/analyses", Analysis.model_validate, limit, filters)

    async def wait(
        self,
        analysis_id: str,
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
        poll_interval: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Analysis:
        """Poll until succeeded or failed (a failed analysis is returned as is); WaitTimeoutError after timeout."""
        poll = _Poll(timeout, poll_interval)
        last: Analysis | None = None
        while True:
            hint = None
            try:
                response = await self._client.request(RequestOptions("GET", f"/v1/analyses/{analysis_id}"))
                last, hint = Analysis.model_validate(response.json()), parse_retry_after(response.headers)
                if on_progress is not None:
                    on_progress(last)
                if last.done:
                    return last
            except TRANSIENT_WAIT_ERRORS:
                if poll.expired():
                    raise
            if poll.expired() and last is not None:
                raise WaitTimeoutError(last, timeout)
            await self._client.sleep(poll.next_delay(hint))

    @overload
    async def report(self, analysis_id: str, *, format: Literal["json"] = "json") -> Report: ...
    @overload
    async def report(self, analysis_id: str, *, format: Literal["markdown", "html", "junit"]) -> str: ...
    async def report(self, analysis_id: str, *, format: ReportFormat = "json") -> Report | str:
        """The report (ConflictError 409 until the analysis succeeded); json gives a Report, others text."""
        return _parse_report(await self._client.request(_report_options(analysis_id, format)), format)
