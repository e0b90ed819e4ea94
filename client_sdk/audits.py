"""`client.audits`: scheduled audits of a model reference, their run history and webhook deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from ._base import RequestOptions
from ._constants import RETRY_STATUSES
from .analyses import OptimizerArg, create_body
from .pagination import AsyncPage, SyncPage, async_pages, sync_pages
from .types import Audit, AuditRun, WebhookDelivery

if TYPE_CHECKING:
    from ._base import AsyncAPIClient, SyncAPIClient

NotifyOn = Literal["regression", "warning", "error", "critical"]
NO_RETRY_CONFLICT = RETRY_STATUSES - {409}  # a 409 here is an answer, not a transient failure


def _create_options(
    name: str,
    schedule: str,
    model: str,
    batch_id: str,
    webhook_url: str | None,
    notify_on: NotifyOn,
    loss: str | None,
    optimizer: OptimizerArg,
    precision: str,
    checks: Sequence[str],
) -> RequestOptions:
    setup = {k: v for k, v in create_body("", "", loss, optimizer, precision, checks).items() if not k.endswith("_id")}
    body: dict[str, Any] = {
        "name": name,
        "schedule": schedule,
        "model": model,
        "batch_id": batch_id,
        "options": setup,
        "notify_on": notify_on,
    }
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    return RequestOptions("POST", "/v1/audits", json=body, retry_statuses=NO_RETRY_CONFLICT)


def _run_options(audit_id: str) -> RequestOptions:
    return RequestOptions("POST", f"/v1/audits/{audit_id}/run", retry_statuses=NO_RETRY_CONFLICT)


def _status_options(audit_id: str, status: str) -> RequestOptions:
    return RequestOptions("PATCH", f"/v1/audits/{audit_id}", json={"status": status})


class Audits:
    """Create one with a single call; its `webhook_secret` is returned only by create()."""

    def __init__(self, client: SyncAPIClient) -> None:
        self._client = client

    def create(
        self,
        *,
        name: str,
        schedule: str,
        model: str,
        batch_id: str,
        webhook_url: str | None = None,
        notify_on: NotifyOn = "regression",
        loss: str | None = None,
        optimizer: OptimizerArg = None,
        precision: str = "fp32",
        checks: Sequence[str] = ("standard",),
    ) -> Audit:
        """A cron schedule (UTC) that re-analyses `model` (id, NAME:latest or NAME:N) on a stored batch."""
        options = _create_options(
            name, schedule, model, batch_id, webhook_url, notify_on, loss, optimizer, precision, checks
        )
        return Audit.model_validate(self._client.request(options).json())

    def retrieve(self, audit_id: str) -> Audit:
        """One audit, with its next scheduled time."""
        return self._client._get(f"/v1/audits/{audit_id}", Audit)

    def run(self, audit_id: str) -> AuditRun:
        """Run it now, outside the schedule."""
        return AuditRun.model_validate(self._client.request(_run_options(audit_id)).json())

    def pause(self, audit_id: str) -> Audit:
        """Stop scheduled runs until resume()."""
        return Audit.model_validate(self._client.request(_status_options(audit_id, "paused")).json())

    def resume(self, audit_id: str) -> Audit:
        """Schedule again from the next slot (slots missed while paused are skipped)."""
        return Audit.model_validate(self._client.request(_status_options(audit_id, "active")).json())

    def list(self, *, limit: int = 50) -> SyncPage[Audit]:
        """This project's audits, newest first; iterating the page walks every later page too."""
        return sync_pages(self._client, "/v1/audits", Audit.model_validate, limit)

    def history(self, audit_id: str, *, limit: int = 50) -> SyncPage[AuditRun]:
        """The runs, newest first, each with its analysis, health and comparison with the run before."""
        return sync_pages(self._client, f"/v1/audits/{audit_id}/history", AuditRun.model_validate, limit)

    def deliveries(self, audit_id: str, *, limit: int = 100) -> SyncPage[WebhookDelivery]:
        """The webhook delivery attempts, newest first."""
        return sync_pages(self._client, f"/v1/audits/{audit_id}/deliveries", WebhookDelivery.model_validate, limit)


class AsyncAudits:
    """`client.audits` of AsyncClient."""

    def __init__(self, client: AsyncAPIClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        name: str,
        schedule: str,
        model: str,
        batch_id: str,
        webhook_url: str | None = None,
        notify_on: NotifyOn = "regression",
        loss: str | None = None,
        optimizer: OptimizerArg = None,
        precision: str = "fp32",
        checks: Sequence[str] = ("standard",),
    ) -> Audit:
        """A cron schedule (UTC) that re-analyses `model` (id, NAME:latest or NAME:N) on a stored batch."""
        options = _create_options(
            name, schedule, model, batch_id, webhook_url, notify_on, loss, optimizer, precision, checks
        )
        return Audit.model_validate((await self._client.request(options)).json())

    async def retrieve(self, audit_id: str) -> Audit:
        """One audit, with its next scheduled time."""
        return await self._client._get(f"/v1/audits/{audit_id}", Audit)

    async def run(self, audit_id: str) -> AuditRun:
        """Run it now, outside the schedule."""
        return AuditRun.model_validate((await self._client.request(_run_options(audit_id))).json())

    async def pause(self, audit_id: str) -> Audit:
        """Stop scheduled runs until resume()."""
        return Audit.model_validate((await self._client.request(_status_options(audit_id, "paused"))).json())

    async def resume(self, audit_id: str) -> Audit:
        """Schedule again from the next slot (slots missed while paused are skipped)."""
        return Audit.model_validate((await self._client.request(_status_options(audit_id, "active"))).json())

    async def list(self, *, limit: int = 50) -> AsyncPage[Audit]:
        """This project's audits, newest first; `async for` walks every later page too."""
        return await async_pages(self._client, "/v1/audits", Audit.model_validate, limit)

    async def history(self, audit_id: str, *, limit: int = 50) -> AsyncPage[AuditRun]:
        """The runs, newest first, each with its analysis, health and comparison with the run before."""
        return await async_pages(self._client, f"/v1/audits/{audit_id}/history", AuditRun.model_validate, limit)

    async def deliveries(self, audit_id: str, *, limit: int = 100) -> AsyncPage[WebhookDelivery]:
        """The webhook delivery attempts, newest first."""
        path = f"/v1/audits/{audit_id}/deliveries"
        return await async_pages(self._client, path, WebhookDelivery.model_validate, limit)
