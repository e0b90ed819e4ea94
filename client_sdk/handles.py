"""What `analyze(..., wait=False)` returns: a handle to follow one analysis to its report."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal, overload

from ._base import parse_retry_after
from ._constants import DEFAULT_WAIT_TIMEOUT
from ._progress import ProgressBar
from .errors import AnalysisFailedError, ConflictError
from .report import Report
from .types import Analysis, ReportFormat

if TYPE_CHECKING:
    from .client import AsyncClient, Client

NOT_READY_RETRY = 0.5


def _failed(exc: ConflictError) -> bool:
    return exc.code == "analysis_failed"


class AnalysisHandle:
    """One submitted analysis: `.status()`, `.wait()` for its Report, `.report()` once done."""

    def __init__(self, client: Client, analysis: Analysis) -> None:
        self._client = client
        self.analysis = analysis
        """The state last seen."""

    @property
    def id(self) -> str:
        """The analysis id (also what `gradhealth check --baseline` accepts)."""
        return self.analysis.id

    def __repr__(self) -> str:
        return f"AnalysisHandle(id={self.id!r}, status={self.analysis.status!r})"

    def status(self) -> Analysis:
        """Fetch the current state (status, progress, error)."""
        self.analysis = self._client.analyses.retrieve(self.id)
        return self.analysis

    def wait(self, *, timeout: float = DEFAULT_WAIT_TIMEOUT, progress: bool = True) -> Report:
        """Wait for the report; AnalysisFailedError if it failed, WaitTimeoutError after timeout seconds."""
        with ProgressBar(progress, f"analysis {self.id[:8]}") as bar:
            return follow(self, timeout, bar)

    @overload
    def report(self, format: Literal["json"] = "json") -> Report: ...
    @overload
    def report(self, format: Literal["markdown", "html", "junit"]) -> str: ...
    def report(self, format: ReportFormat = "json") -> Report | str:
        """The finished report (ConflictError while it runs, AnalysisFailedError if it failed)."""
        try:
            return self._client.analyses.report(self.id, format=format)
        except ConflictError as exc:
            if _failed(exc):
                raise AnalysisFailedError(self.status()) from exc
            raise


class AsyncAnalysisHandle:
    """One submitted analysis (async): `await .status()`, `await .wait()`, `await .report()`."""

    def __init__(self, client: AsyncClient, analysis: Analysis) -> None:
        self._client = client
        self.analysis = analysis
        """The state last seen."""

    @property
    def id(self) -> str:
        """The analysis id."""
        return self.analysis.id

    def __repr__(self) -> str:
        return f"AsyncAnalysisHandle(id={self.id!r}, status={self.analysis.status!r})"

    async def status(self) -> Analysis:
        """Fetch the current state (status, progress, error)."""
        self.analysis = await self._client.analyses.retrieve(self.id)
        return self.analysis

    async def wait(self, *, timeout: float = DEFAULT_WAIT_TIMEOUT, progress: bool = True) -> Report:
        """Wait for the report; AnalysisFailedError if it failed, WaitTimeoutError after timeout seconds."""
        with ProgressBar(progress, f"analysis {self.id[:8]}") as bar:
            return await follow_async(self, timeout, bar)

    async def report(self, format: ReportFormat = "json") -> Report | str:
        """The finished report (ConflictError while it runs, AnalysisFailedError if it failed)."""
        try:
            return await self._client.analyses.report(self.id, format=format)
        except ConflictError as exc:
            if _failed(exc):
                raise AnalysisFailedError(await self.status()) from exc
            raise


def follow(handle: AnalysisHandle, timeout: float, bar: ProgressBar) -> Report:
    """handle.wait() on a bar already shown (Client.analyze's, past packaging and uploading)."""
    deadline = time.monotonic() + timeout
    client = handle._client
    handle.analysis = client.analyses.wait(handle.id, timeout=timeout, on_progress=bar.update)
    if handle.analysis.status == "failed":
        raise AnalysisFailedError(handle.analysis)
    while True:  # succeeded: the report is written before the status flips, but tolerate a lagging replica
        try:
            return client.analyses.report(handle.id)
        except ConflictError as exc:
            if _failed(exc):
                raise AnalysisFailedError(handle.status()) from exc
            if time.monotonic() >= deadline:
                raise
            client.sleep(parse_retry_after(exc.response.headers) or NOT_READY_RETRY)


async def follow_async(handle: AsyncAnalysisHandle, timeout: float, bar: ProgressBar) -> Report:
    """follow() for AsyncClient: AsyncAnalysisHandle.wait() on a bar already shown."""
    deadline = time.monotonic() + timeout
    client = handle._client
    handle.analysis = await client.analyses.wait(handle.id, timeout=timeout, on_progress=bar.update)
    if handle.analysis.status == "failed":
        raise AnalysisFailedError(handle.analysis)
    while True:
        try:
            return await client.analyses.report(handle.id)
        except ConflictError as exc:
            if _failed(exc):
                raise AnalysisFailedError(await handle.status()) from exc
            if time.monotonic() >= deadline:
                raise
            await client.sleep(parse_retry_after(exc.response.headers) or NOT_READY_RETRY)
