"""The scheduler without servers: due slots, missed slots collapsing, exactly one run per slot."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from gradhealth.store import audits, keys
from gradhealth.store.db import migrate, session_scope
from gradhealth.store.models import Audit, AuditRun, Batch, ModelPackage
from gradhealth.store.settings import Settings
from sqlalchemy import func, select

CREATED = datetime(2026, 11, 29, 19, 40)


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = request.getfixturevalue("private_pg_url") if request.param == "postgresql" else None
    settings = Settings(data_dir=tmp_path, database_url=url)
    migrate(settings)
    return settings


def add_audit(settings: Settings, schedule: str, model_ref: str = "m:latest") -> str:
    with session_scope(settings) as session:
        project = keys.create_project(session, f"audit-{secrets.token_hex(4)}")
        session.flush()
        batch = Batch(project_id=project.id, sha256="b" * 64, size_bytes=1, shapes="{}")
        model = ModelPackage(project_id=project.id, sha256="a" * 64, size_bytes=1, format="torch.export")
        model.name, model.version = "m", 1
        session.add_all([batch, model])
        session.flush()
        audit = Audit(
            project_id=project.id,
            name="a",
            schedule=schedule,
            model_ref=model_ref,
            batch_id=batch.id,
            options="{}",
            webhook_secret="s",
            notify_on="regression",
            created_at=CREATED,
        )
        session.add(audit)
        session.flush()
        return audit.id


def runs(settings: Settings, audit_id: str) -> list[AuditRun]:
    with session_scope(settings) as session:
        return list(session.scalars(select(AuditRun).where(AuditRun.audit_id == audit_id).order_by(AuditRun.slot)))


def test_schedule_validation() -> None:
    assert audits.valid_schedule("0 3 * * *") is None
    assert "5 fields" in (audits.valid_schedule("@daily") or "")
    assert "not a valid cron" in (audits.valid_schedule("0 25 * * *") or "")


def test_each_slot_runs_once_however_many_tickers(settings: Settings) -> None:
    audit_id = add_audit(settings, "0 3 * * *")
    sent: list[tuple[str, str]] = []
    send = lambda name, object_id: sent.append((name, object_id))  # noqa: E731
    assert audits.tick(settings, datetime(2026, 11, 30, 2, 59), send) == []  # not due yet
    slot = datetime(2026, 11, 30, 3, 0)
    with ThreadPoolExecutor(4) as pool:
        started = [
            r for got in pool.map(lambda _: audits.tick(settings, slot, send, audit_id=audit_id), range(4)) for r in got
        ]
    assert len(started) == 1 and len(sent) == 1
    assert audits.tick(settings, slot, send, audit_id=audit_id) == []  # a restarted ticker, same time
    # Three days missed: one run, for the newest slot.
    assert len(audits.tick(settings, datetime(2026, 12, 3, 9, 0), send, audit_id=audit_id)) == 1
    assert [r.slot for r in runs(settings, audit_id)] == [slot, datetime(2026, 12, 3, 3, 0)]
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(AuditRun)) >= 2


def test_an_unknown_model_fails_the_run_with_a_clear_message(settings: Settings) -> None:
    audit_id = add_audit(settings, "*/5 * * * *", model_ref="gone:latest")
    sent: list[tuple[str, str]] = []
    started = audits.tick(settings, datetime(2026, 11, 29, 19, 45), lambda n, i: sent.append((n, i)), audit_id=audit_id)
    [run] = runs(settings, audit_id)
    assert started == [run.id] and run.status == "failed" and sent == []
    assert run.error_message is not None and "no model named 'gone'" in run.error_message
