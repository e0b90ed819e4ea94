"""Watched training runs: start one, append log batches, read its report and one layer's history."""

from __future__ import annotations

import json
import math

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from gradhealth.diagnostics.run_rules.metrics import GradientMetric
from gradhealth.report import Finding, Severity, severity_at_least
from gradhealth.store import outbox, runs
from gradhealth.store.celery_app import Send
from gradhealth.store.db import session_factory
from gradhealth.store.keys import Principal
from gradhealth.store.models import RunWebhookDelivery, TrainingRun
from gradhealth.store.run_extra_segments import run_activations
from gradhealth.store.run_report import build_report
from gradhealth.store.run_segments import read_layer
from gradhealth.store.runs import ingest, layer_names
from gradhealth.store.settings import Settings
from gradhealth.store.task_names import DELIVER_RUN_WEBHOOK

from ..audit_schemas import DeliveriesPublic, DeliveryPublic
from ..deps import ReadAccess, SendDep, SessionDep, SettingsDep, WriteAccess
from ..errors import ApiError
from ..idempotency import IdempotencyKey, create_idempotent
from ..paging import LogPaging, Paging
from ..reports import MEDIA_TYPES, ReportFormat, render
from ..resources import get_owned
from ..run_codec import parse_body, to_log_batch
from ..run_schemas import LayerHistory, LogAck, RunCreate, RunCreated, RunFindings, RunPublic, RunsPublic
from ..webhook_urls import checked_webhook_url

PATH = "/v1/runs"
router = APIRouter(prefix="/runs", tags=["runs"])


def to_public(row: TrainingRun) -> RunPublic:
    """The API view of a run."""
    return RunPublic(
        id=row.id,
        name=row.name,
        num_layers=len(json.loads(row.layers)),
        metrics=json.loads(row.metrics),
        run_steps=row.num_steps,
        first_step=row.first_step,
        last_step=row.last_step,
        batches=row.num_batches,
        dropped_steps=row.dropped,
        health=row.health,
        webhook_url=row.webhook_url,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


@router.post("", status_code=201, response_model=RunCreated)
def create_run(
    body: RunCreate,
    response: Response,
    principal: WriteAccess,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> RunCreated:
    """Start a run; honours Idempotency-Key (see the header): a retry returns the same run."""
    request = {
        "name": body.name,
        "layers": json.dumps([layer.model_dump() for layer in body.layers]),
        "metrics": json.dumps(body.metrics),
        "config": json.dumps(body.config, default=str),
        "webhook_url": checked_webhook_url(settings, body.webhook_url),
    }
    extra = {"webhook_secret": outbox.new_secret()}
    row, _ = create_idempotent(session, principal, response, idempotency_key, TrainingRun, PATH, request, extra)
    return RunCreated(**to_public(row).model_dump(), webhook_secret=row.webhook_secret)


@router.get("", response_model=RunsPublic)
def list_runs(principal: ReadAccess, session: SessionDep, page: Paging) -> RunsPublic:
    """This project's runs, most recently updated first, as {data, count} like every list."""
    found = runs.list_page(session, principal.project_id, page.limit, page.offset)
    return RunsPublic(data=[to_public(row) for row in found.rows], count=found.count)


@router.get("/{run_id}", response_model=RunPublic)
def read_run(run_id: str, principal: ReadAccess, session: SessionDep) -> RunPublic:
    """Counters and health of one run."""
    return to_public(get_owned(session, TrainingRun, run_id, principal, "run"))


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, f"the batch is larger than this server's limit of {limit} bytes; send fewer steps per batch"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413, f"the batch is larger than this server's limit of {limit} bytes; send fewer steps per batch"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _append(
    settings: Settings,
    send: Send,
    principal: Principal,
    run_id: str,
    raw: bytes,
    ctype: str | None,
    cenc: str | None,
) -> LogAck:
    """Decode, validate against the run, store and evaluate; then call the webhook if the run just went bad."""
    body = parse_body(raw, ctype, cenc, settings.max_log_batch_bytes)  # gzip inflates to the batch limit, no more
    with session_factory(settings)() as session:
        run = get_owned(session, TrainingRun, run_id, principal, "run")
        declared = run_activations(run.config)
        batch = to_log_batch(body, json.loads(run.metrics), len(json.loads(run.layers)), len(declared))
        session.rollback()  # release the read; ingest takes the row lock itself
        result = ingest(session, run_id, principal.project_id, batch, outbox.first_due(settings))
    if result is None:
        raise ApiError(404, f"no run with id {run_id!r} in this project")
    if result.delivery_id:  # the row is committed: a lost message only delays it until the ticker's next look
        outbox.hand_over(settings, RunWebhookDelivery, DELIVER_RUN_WEBHOOK, result.delivery_id, send)
    return LogAck(
        stored=result.stored, seq=result.seq, steps=result.steps, run_steps=result.run_steps, health=result.health
    )


@router.post(
    "/{run_id}/logs",
    response_model=LogAck,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/LogBatchBody"}},
                "application/msgpack": {},
            },
            "description": "One columnar batch (docs/runs.md); Content-Encoding: gzip is honoured.",
        }
    },
)
async def append_logs(
    run_id: str,
    request: Request,
    principal: WriteAccess,
    settings: SettingsDep,
    send: SendDep,
    content_type: str | None = Header(default=None),
    content_encoding: str | None = Header(default=None),
) -> LogAck:
    """Append one batch; a batch whose (run, seq) is stored already is acknowledged with stored=false."""
    raw = await _read_capped(request, settings.max_log_batch_bytes)
    return await run_in_threadpool(_append, settings, send, principal, run_id, raw, content_type, content_encoding)


def _report(settings: Settings, principal: Principal, run_id: str, fmt: ReportFormat) -> bytes:
    with session_factory(settings)() as session:
        run = get_owned(session, TrainingRun, run_id, principal, "run")
        body = build_report(session, run).model_dump_json()
    return render(body, fmt)


@router.get("/{run_id}/report", responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}})
async def read_run_report(
    run_id: str, principal: ReadAccess, settings: SettingsDep, format: ReportFormat = "json"
) -> Response:
    """The diagnosis so far: JSON (schema, kind "run", with a timeline), Markdown, HTML with charts, or JUnit."""
    data = await run_in_threadpool(_report, settings, principal, run_id, format)
    return Response(data, media_type=MEDIA_TYPES[format])


@router.get("/{run_id}/layers/{layer:path}/history", response_model=LayerHistory)
def layer_history(
    run_id: str,
    layer: str,
    principal: ReadAccess,
    session: SessionDep,
    metric: GradientMetric = "grad_norm",
) -> LayerHistory:
    """Every logged value of one metric of one layer, read from that layer's segments only."""
    run = get_owned(session, TrainingRun, run_id, principal, "run")
    names, metrics = layer_names(run), json.loads(run.metrics)
    if layer not in names:
        raise ApiError(404, f"run {run_id!r} has no layer {layer!r}; its layers start {names[:5]}")
    if metric not in metrics:
        raise ApiError(422, f"this run does not log {metric!r}; it logs {metrics}", code="validation_error")
    steps, values = read_layer(session, run.id, names.index(layer), len(metrics))
    column = values[metrics.index(metric)].tolist()
    keep = [i for i, v in enumerate(column) if not math.isnan(v)]
    return LayerHistory(
        layer=layer,
        metric=metric,
        steps=[int(steps[i]) for i in keep],
        values=[column[i] if math.isfinite(column[i]) else None for i in keep],
        nonfinite_steps=[int(steps[i]) for i in keep if math.isinf(column[i])],
    )


@router.get("/{run_id}/deliveries", response_model=DeliveriesPublic)
def run_deliveries(run_id: str, principal: ReadAccess, session: SessionDep, page: LogPaging) -> DeliveriesPublic:
    """The run's webhook delivery attempts, newest first."""
    get_owned(session, TrainingRun, run_id, principal, "run")
    found = runs.deliveries_page(session, run_id, page.limit, page.offset)
    return DeliveriesPublic(
        data=[DeliveryPublic.model_validate(row, from_attributes=True) for row in found.rows], count=found.count
    )


@router.get("/{run_id}/findings", response_model=RunFindings)
def run_findings(run_id: str, principal: ReadAccess, session: SessionDep, severity: Severity = "info") -> RunFindings:
    """The run's current findings at or above `severity`, without the report's timeline (what watch(on_finding=) polls)."""
    run = get_owned(session, TrainingRun, run_id, principal, "run")
    found = [Finding.model_validate(f) for f in json.loads(run.findings)]
    kept = [f for f in found if severity_at_least(f.severity, severity)]
    return RunFindings(data=kept, count=len(kept), health=run.health, run_steps=run.num_steps)
