"""Store and worker logic on a real SQLite file (and PostgreSQL for migrations): idempotency,
exclusive claims, recovery sweeps, blobs, keys."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from gradhealth.store import analyses, keys
from gradhealth.store.blobs import BlobTooLarge, LocalBlobStore
from gradhealth.store.db import get_engine, migrate, session_scope
from gradhealth.store.models import Analysis, Base, Batch, ModelPackage, StoredReport, utcnow
from gradhealth.store.settings import Settings
from gradhealth.workers.runner import execute_analysis
from sqlalchemy import func, select, update
from torch import nn

import gradhealth

from .artifacts import Files


def add_analysis(settings: Settings, model: Path, batch: Path, **options: object) -> str:
    """Rows and blobs as the API would leave them after upload and POST /v1/analyses."""
    store = LocalBlobStore(settings.resolved_blob_dir, settings.max_upload_bytes)
    shas = []
    for path in (model, batch):
        staged = store.stage()
        staged.write(path.read_bytes())
        shas.append(store.commit(staged))
    with session_scope(settings) as session:
        project = keys.create_project(session, f"p-{len(session.scalars(select(ModelPackage)).all())}-{shas[0][:6]}")
        m = ModelPackage(project_id=project.id, sha256=shas[0], size_bytes=1, format="torch.export")
        b = Batch(project_id=project.id, sha256=shas[1], size_bytes=1, shapes="{}")
        session.add_all([m, b])
        session.flush()
        row = Analysis(project_id=project.id, model_id=m.id, batch_id=b.id, options=json.dumps(options))
        session.add(row)
        session.flush()
        return row.id


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", lease_seconds=30, max_attempts=3)
    migrate(s)
    return s


def rows(settings: Settings, analysis_id: str) -> tuple[Analysis, int]:
    with session_scope(settings) as session:
        count = session.scalar(
            select(func.count()).select_from(StoredReport).where(StoredReport.analysis_id == analysis_id)
        )
        row = session.get(Analysis, analysis_id)
        assert row is not None
        return row, int(count or 0)


@pytest.mark.slow
@pytest.mark.parametrize("repeat", [1, 2])
def test_run_analysis_is_idempotent(settings: Settings, files: Files, repeat: int) -> None:
    analysis_id = add_analysis(settings, files.models["deep_sigmoid_mlp"], files.batches["deep_sigmoid_mlp"])
    outcomes = [execute_analysis(settings, analysis_id, "w") for _ in range(repeat)]
    assert outcomes == ["succeeded"] + ["skipped"] * (repeat - 1)
    row, reports = rows(settings, analysis_id)
    assert (row.status, row.attempts, reports, row.health) == ("succeeded", 1, 1, "error")


def test_claims_are_exclusive_and_a_superseded_attempt_cannot_write(settings: Settings, files: Files) -> None:
    analysis_id = add_analysis(settings, files.models["plain"], files.batches["plain"])
    first = analyses.claim(settings, analysis_id, "a")
    assert first is not None and analyses.claim(settings, analysis_id, "b") is None  # lease is live
    with session_scope(settings) as session:  # worker "a" stops heart-beating
        session.execute(update(Analysis).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
    second = analyses.claim(settings, analysis_id, "b")
    assert second is not None and second.attempt == 2
    assert not analyses.heartbeat(settings, first, "statistics", 0.5)
    assert not analyses.complete(settings, first, "{}", "healthy", 1.0, None)
    assert analyses.complete(settings, second, '{"from": "b"}', "healthy", 1.0, None)
    assert not analyses.fail(settings, first, "late", "too late")
    row, reports = rows(settings, analysis_id)
    assert (row.status, row.worker, reports) == ("succeeded", "b", 1)


def test_sweep_requeues_lost_and_stale_and_gives_up_eventually(settings: Settings, files: Files) -> None:
    ids = [add_analysis(settings, files.models["plain"], files.batches["plain"]) for _ in range(4)]
    lost, stale, exhausted, fresh = ids
    old = utcnow() - timedelta(hours=1)
    with session_scope(settings) as session:
        session.execute(update(Analysis).where(Analysis.id == lost).values(enqueued_at=old))
        session.execute(
            update(Analysis).where(Analysis.id == stale).values(status="running", heartbeat_at=old, attempts=1)
        )
        session.execute(
            update(Analysis).where(Analysis.id == exhausted).values(status="running", heartbeat_at=old, attempts=3)
        )
    sent: list[tuple[str, str]] = []
    result = analyses.sweep(settings, lambda name, object_id: sent.append((name, object_id)))
    assert result.requeued_lost == [lost] and result.requeued_stale == [stale] and result.failed == [exhausted]
    assert sorted(sent) == sorted([(analyses.RUN_ANALYSIS, lost), (analyses.RUN_ANALYSIS, stale)])
    assert rows(settings, stale)[0].status == "queued"
    failed = rows(settings, exhausted)[0]
    assert (
        failed.status == "failed" and failed.error_code == "worker_lost" and "3 times" in (failed.error_message or "")
    )
    assert rows(settings, fresh)[0].status == "queued"
    assert analyses.sweep(settings, lambda *_: sent.append(("again", ""))).requeued_lost == []  # not twice at once


def test_blob_store_is_content_addressed_atomic_and_limited(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path, max_bytes=10)
    first, second = store.stage(), store.stage()
    first.write(b"hello")
    second.write(b"hello")
    key = store.commit(first)
    assert store.commit(second) == key and store.local_path(key).read_bytes() == b"hello"
    big = store.stage()
    with pytest.raises(BlobTooLarge):
        big.write(b"x" * 11)
    store.discard(big)
    assert list((tmp_path / "tmp").rglob("upload-*")) == []
    with pytest.raises(FileNotFoundError):
        store.local_path("0" * 64)


def test_keys_are_hashed_scoped_and_revocable(settings: Settings) -> None:
    with session_scope(settings) as session:
        project = keys.create_project(session, "team")
        key = keys.create_key(session, project, ["read"])
        with pytest.raises(keys.AdminError, match="already exists"):
            keys.create_project(session, "team")
        with pytest.raises(keys.AdminError, match="unknown scope"):
            keys.create_key(session, project, ["root"])
    with session_scope(settings) as session:
        stored = session.scalars(select(keys.ApiKey)).one()
        assert stored.key_hash == keys.hash_key(key) and key not in (stored.key_hash, stored.prefix)
        principal = keys.authenticate(session, key)
        assert principal is not None and principal.allows("read") and not principal.allows("write")
        assert keys.Principal("p", "k", frozenset({"admin"})).allows("write")
        stored.revoked_at = utcnow() - timedelta(seconds=1)
    with session_scope(settings) as session:
        assert keys.authenticate(session, key) is None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_match_the_models(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("private_pg_url") if backend == "postgresql" else None
    s = Settings(data_dir=tmp_path, database_url=url)
    migrate(s)
    migrate(s)  # idempotent
    with get_engine(s.resolved_database_url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


class _WideActivation(nn.Module):
    """Each sample expands to 16 × width floats: a large batch cannot fit a small memory limit."""

    def __init__(self, width: int = 2**20) -> None:
        super().__init__()
        self.width = width
        self.scale = nn.Parameter(torch.ones(1))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = (x.unsqueeze(-1).expand(-1, -1, self.width) * self.scale).tanh()  # 64 MiB a sample by default
        return self.head(wide.mean(-1))


@pytest.mark.slow
def test_out_of_memory_retries_with_a_smaller_batch(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", analysis_memory_limit_mb=3000)
    migrate(settings)
    torch.manual_seed(0)
    x, y = torch.randn(64, 16), torch.randint(0, 3, (64,))
    model_path = gradhealth.package(_WideActivation(), "cross_entropy", x[:4], y[:4], tmp_path / "wide.pt2")
    batch_path = gradhealth.save_batch(tmp_path / "wide.safetensors", x, y)
    analysis_id = add_analysis(settings, model_path, batch_path)
    assert execute_analysis(settings, analysis_id, "w") == "succeeded"
    row, reports = rows(settings, analysis_id)
    assert reports == 1 and row.note is not None and "analysed the first" in row.note, row.note


@pytest.mark.slow
def test_a_model_too_big_for_one_sample_fails_as_out_of_memory(tmp_path: Path) -> None:
    """A real allocation failure (2 GiB per sample under a 3000 MiB limit) is classified by type."""
    settings = Settings(data_dir=tmp_path / "data", analysis_memory_limit_mb=3000)
    migrate(settings)
    x, y = torch.randn(4, 16), torch.randint(0, 3, (4,))
    model_path = gradhealth.package(_WideActivation(2**25), "cross_entropy", x[:2], y[:2], tmp_path / "huge.pt2")
    batch_path = gradhealth.save_batch(tmp_path / "huge.safetensors", x, y)
    analysis_id = add_analysis(settings, model_path, batch_path)
    assert execute_analysis(settings, analysis_id, "w") == "failed"
    row, reports = rows(settings, analysis_id)
    assert reports == 0 and row.error_code == "out_of_memory", (row.error_code, row.error_message)
    assert "even with one sample" in (row.error_message or "")


def test_progress_is_stored_rounded(tmp_path: Path, files: Files) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    migrate(settings)
    name = "mlp_dead_relu_negative_bias"
    analysis_id = add_analysis(settings, files.models[name], files.batches[name])
    claim = analyses.claim(settings, analysis_id, "w")
    assert claim is not None and analyses.heartbeat(settings, claim, "statistics", 0.3 + (1 - 0.3) * 0.15)
    row, _ = rows(settings, analysis_id)
    assert (row.phase, row.fraction) == ("statistics", 0.405)
