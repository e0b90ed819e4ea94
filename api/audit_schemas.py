"""Audit request and response bodies: schedules, runs with their comparison, webhook deliveries."""

from __future__ import annotations

import json
from typing import Any, Literal

from gradhealth.store.audits import valid_schedule
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .schemas import AnalysisSetup, UtcDatetime, WebhookUrl

NotifyOn = Literal["regression", "warning", "error", "critical"]


class AuditCreate(BaseModel):
    """A schedule that re-analyses a model reference on a stored batch and notifies a webhook."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(min_length=1, max_length=200)
    schedule: str = Field(description="5-field cron in UTC, e.g. '0 3 * * *'", max_length=120)
    model: str = Field(description="a model id (that fixed version), NAME:latest or NAME:N", max_length=255)
    batch_id: str
    options: AnalysisSetup = Field(default_factory=AnalysisSetup)
    webhook_url: WebhookUrl | None = None
    notify_on: NotifyOn = Field(
        default="regression", description="regression only, or also a new finding at or above this severity"
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        problem = valid_schedule(value.strip())
        if problem:
            raise ValueError(problem)
        return " ".join(value.split())


class AuditUpdate(BaseModel):
    """Pause or resume an audit."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["active", "paused"]


class AuditPublic(BaseModel):
    """An audit and when it runs next."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    name: str
    schedule: str
    model: str
    batch_id: str
    options: dict[str, Any]
    webhook_url: str | None
    notify_on: NotifyOn
    status: Literal["active", "paused"]
    last_slot: UtcDatetime | None
    next_run_at: UtcDatetime | None
    created_at: UtcDatetime


class AuditCreated(AuditPublic):
    """The new audit, with its webhook signing secret: shown only this once."""

    webhook_secret: str


class AuditsPublic(BaseModel):
    """A page of audits."""

    data: list[AuditPublic]
    count: int


class AuditRunPublic(BaseModel):
    """One run: its analysis, health, and the comparison with the previous run of the audit."""

    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: str
    audit_id: str
    slot: UtcDatetime
    trigger: Literal["schedule", "manual"]
    status: Literal["running", "succeeded", "failed"]
    model_id: str | None
    analysis_id: str | None
    health: str | None
    error_message: str | None
    previous_run_id: str | None
    regressed: bool | None
    comparison: dict[str, Any] | None
    notify: bool = Field(description="whether this run met the audit's notify_on condition")
    created_at: UtcDatetime
    finished_at: UtcDatetime | None

    @field_validator("comparison", mode="before")
    @classmethod
    def _parse(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value


class AuditRunsPublic(BaseModel):
    """A page of runs, newest first."""

    data: list[AuditRunPublic]
    count: int


class DeliveryPublic(BaseModel):
    """One webhook delivery attempt."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    run_id: str
    attempt: int
    url: str
    status_code: int | None
    ok: bool
    category: Literal["connect_failed", "timeout", "http_status", "refused_address"] | None = Field(
        default=None, description="why the attempt failed; null when it was delivered"
    )
    error: str | None
    duration_ms: float | None
    pending: bool = Field(default=False, description="not attempted yet: a retry waiting for its due time")
    created_at: UtcDatetime


class DeliveriesPublic(BaseModel):
    """Delivery attempts, newest first."""

    data: list[DeliveryPublic]
    count: int


class TickRequest(BaseModel):
    """Run the scheduler as if the time were `now` (tests, or catching up by hand)."""

    now: UtcDatetime | None = None
    audit_id: str | None = Field(default=None, description="only this audit (default: all of the project's)")
