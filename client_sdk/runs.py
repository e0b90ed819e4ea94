"""`client.runs`: training runs streamed by `gradhealth.watch()`, their logs, reports and layer histories."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gradhealth.report import Finding

from ._base import RequestOptions
from .pagination import AsyncPage, SyncPage, async_pages, sync_pages
from .report import Report
from .run_compare import RunComparison, compare_options
from .types import Run

if TYPE_CHECKING:
    from ._base import AsyncAPIClient, SyncAPIClient

MSGPACK = "application/msgpack"


def _create_options(
    name: str, layers: list[dict[str, Any]], metrics: list[str] | None, config: dict[str, Any], webhook_url: str | None
) -> RequestOptions:
    body: dict[str, Any] = {"name": name, "layers": layers, "config": config}
    if metrics is not None:
        body["metrics"] = metrics
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    return RequestOptions("POST", "/v1/runs", json=body)


def _append_options(run_id: str, body: bytes, content_type: str, content_encoding: str | None) -> RequestOptions:
    headers = {"Content-Type": content_type}
    if content_encoding:
        headers["Content-Encoding"] = content_encoding
    return RequestOptions("POST", f"/v1/runs/{run_id}/logs", content=body, headers=headers)


def _history_options(run_id: str, layer: str, metric: str) -> RequestOptions:
    return RequestOptions("GET", f"/v1/runs/{run_id}/layers/{quote(layer, safe='')}/history", params={"metric": metric})


def _findings_options(run_id: str, severity: str) -> RequestOptions:
    return RequestOptions("GET", f"/v1/runs/{run_id}/findings", params={"severity": severity})


class Runs:
    """Start a run, append log batches (the server dedupes by batch `seq`), read its report."""

    def __init__(self, client: SyncAPIClient) -> None:
        self._client = client

    def create(
        self,
        name: str,
        layers: list[dict[str, Any]],
        metrics: list[str] | None = None,
        config: dict[str, Any] | None = None,
        webhook_url: str | None = None,
    ) -> Run:
        """Register the run and its layer list (sent once); the layer order fixes the log columns."""
        return Run.model_validate(
            self._client.request(_create_options(name, layers, metrics, config or {}, webhook_url)).json()
        )

    def retrieve(self, run_id: str) -> Run:
        """The run's counters and current health."""
        return self._client._get(f"/v1/runs/{run_id}", Run)

    def list(self, *, limit: int = 50) -> SyncPage[Run]:
        """This project's runs, most recently updated first; iterating the page walks every later page too."""
        return sync_pages(self._client, "/v1/runs", Run.model_validate, limit)

    def append(
        self, run_id: str, body: bytes, *, content_type: str = MSGPACK, content_encoding: str | None = None
    ) -> dict[str, Any]:
        """POST one encoded columnar batch (docs/runs.md); returns the server's acknowledgement."""
        return self._client.request(_append_options(run_id, body, content_type, content_encoding)).json()

    def report(self, run_id: str) -> Report:
        """The diagnosis of the run so far, with its timeline."""
        return self._client._get(f"/v1/runs/{run_id}/report", Report)

    def history(self, run_id: str, layer: str, metric: str = "grad_norm") -> dict[str, list[Any]]:
        """One layer's full history of one metric: {"steps": [...], "values": [...]}."""
        return self._client.request(_history_options(run_id, layer, metric)).json()

    def findings(self, run_id: str, severity: str = "info") -> list[Finding]:
        """The run's current findings at or above `severity` (no timeline: cheap enough to poll)."""
        body = self._client.request(_findings_options(run_id, severity)).json()
        return [Finding.model_validate(f) for f in body["data"]]

    def compare(self, run_ids: Sequence[str | Run], *, points: int | None = None) -> RunComparison:
        """2 to 8 runs aligned by step (at most `points` per series, server default 400); see compare_runs."""
        return RunComparison.model_validate(self._client.request(compare_options(run_ids, points)).json())


class AsyncRuns:
    """The async twin of Runs."""

    def __init__(self, client: AsyncAPIClient) -> None:
        self._client = client

    async def create(
        self,
        name: str,
        layers: list[dict[str, Any]],
        metrics: list[str] | None = None,
        config: dict[str, Any] | None = None,
        webhook_url: str | None = None,
    ) -> Run:
        """Register the run and its layer list (sent once); the layer order fixes the log columns."""
        response = await self._client.request(_create_options(name, layers, metrics, config or {}, webhook_url))
        return Run.model_validate(response.json())

    async def retrieve(self, run_id: str) -> Run:
        """The run's counters and current health."""
        return await self._client._get(f"/v1/runs/{run_id}", Run)

    async def list(self, *, limit: int = 50) -> AsyncPage[Run]:
        """This project's runs, most recently updated first; `async for` walks every later page too."""
        return await async_pages(self._client, "/v1/runs", Run.model_validate, limit)

    async def append(
        self, run_id: str, body: bytes, *, content_type: str = MSGPACK, content_encoding: str | None = None
    ) -> dict[str, Any]:
        """POST one encoded columnar batch (docs/runs.md); returns the server's acknowledgement."""
        return (await self._client.request(_append_options(run_id, body, content_type, content_encoding))).json()

    async def report(self, run_id: str) -> Report:
        """The diagnosis of the run so far, with its timeline."""
        return await self._client._get(f"/v1/runs/{run_id}/report", Report)

    async def history(self, run_id: str, layer: str, metric: str = "grad_norm") -> dict[str, list[Any]]:
        """One layer's full history of one metric: {"steps": [...], "values": [...]}."""
        return (await self._client.request(_history_options(run_id, layer, metric))).json()

    async def findings(self, run_id: str, severity: str = "info") -> list[Finding]:
        """The run's current findings at or above `severity` (no timeline: cheap enough to poll)."""
        body = (await self._client.request(_findings_options(run_id, severity))).json()
        return [Finding.model_validate(f) for f in body["data"]]

    async def compare(self, run_ids: Sequence[str | Run], *, points: int | None = None) -> RunComparison:
        """2 to 8 runs aligned by step (at most `points` per series, server default 400); see compare_runs."""
        return RunComparison.model_validate((await self._client.request(compare_options(run_ids, points))).json())
