"""Retention on real PostgreSQL: prune deletes only what is old and unreferenced; revoke-key; worker health."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from gradhealth.store import keys
from gradhealth.store.blobs import blob_store
from gradhealth.store.db import migrate, session_scope
from gradhealth.store.models import (
    Analysis,
    Audit,
    AuditRun,
    Batch,
    Deletion,
    ModelPackage,
    StoredReport,
    TrainingRun,
    utcnow,
)
from sqlalchemy import select

from .conftest import Stack, admin, base_env, settings_from

OLD = timedelta(days=40)


def _blob(store: object, data: bytes) -> str:
    staged = store.stage()  # type: ignore[attr-defined]
    staged.write(data)
    return str(store.commit(staged))  # type: ignore[attr-defined]


def _world(env: dict[str, str]) -> dict[str, str]:
    """Two projects; in project A, old and new things, referenced and not. Returns name -> id (or sha)."""
    settings = settings_from(env)
    migrate(settings)
    store = blob_store(settings)
    ids: dict[str, str] = {}
    old = utcnow() - OLD
    with session_scope(settings) as s:
        a, b = keys.create_project(s, f"a-{secrets.token_hex(3)}"), keys.create_project(s, f"b-{secrets.token_hex(3)}")
        ids["project_a"], ids["project_b"] = a.id, b.id

        def upload(table: type[Batch] | type[ModelPackage], project: str, name: str, when: object, sha: str) -> str:
            extra = {"shapes": "{}"} if table is Batch else {"format": "pt2"}
            row = table(project_id=project, sha256=sha, size_bytes=3, created_at=when, **extra)
            s.add(row)
            s.flush()
            ids[name] = row.id
            return row.id

        for name in ("sha_lonely", "sha_shared", "sha_used", "sha_new", "sha_model_old", "sha_model_audit"):
            ids[name] = _blob(store, name.encode() + secrets.token_bytes(8))
        upload(Batch, a.id, "batch_lonely", old, ids["sha_lonely"])  # old, unused: goes with its blob
        upload(Batch, a.id, "batch_shared", old, ids["sha_shared"])  # old, unused: goes; blob held by B's row
        upload(Batch, b.id, "batch_shared_b", utcnow(), ids["sha_shared"])
        upload(Batch, a.id, "batch_used", old, ids["sha_used"])  # old, used by a new analysis: stays
        upload(Batch, a.id, "batch_new", utcnow(), ids["sha_new"])  # new: stays
        upload(ModelPackage, a.id, "model_old", old, ids["sha_model_old"])  # old, used by old analyses only: goes
        upload(ModelPackage, a.id, "model_audit", old, ids["sha_model_audit"])  # referenced by an audit: stays

        def analysis(name: str, status: str, when: object, batch: str, model: str) -> None:
            row = Analysis(
                project_id=a.id, model_id=ids[model], batch_id=ids[batch], options="{}", status=status, created_at=when
            )
            s.add(row)
            s.flush()
            ids[name] = row.id
            if status == "succeeded":
                s.add(StoredReport(analysis_id=row.id, body="{}"))

        analysis("analysis_old", "succeeded", old, "batch_lonely", "model_old")
        analysis("analysis_old_failed", "failed", old, "batch_shared", "model_old")
        analysis("analysis_old_queued", "queued", old, "batch_used", "model_audit")  # never pruned while queued
        analysis("analysis_new", "succeeded", utcnow(), "batch_used", "model_audit")
        analysis("analysis_audited", "succeeded", old, "batch_new", "model_audit")  # in an audit's history
        audit = Audit(
            project_id=a.id, name="nightly", schedule="0 3 * * *", model_ref=ids["model_audit"],
            batch_id=ids["batch_new"], options="{}", webhook_secret="x", notify_on="regression",
        )  # fmt: skip
        s.add(audit)
        s.flush()
        s.add(AuditRun(audit_id=audit.id, slot=old, trigger="schedule", analysis_id=ids["analysis_audited"]))
        for name, when in (("run_old", old), ("run_new", utcnow())):
            run = TrainingRun(project_id=a.id, name=name, layers="[]", metrics="[]", config="{}", webhook_secret="x")
            run.updated_at = when
            s.add(run)
            s.flush()
            ids[name] = run.id
    return ids


def _prune(env: dict[str, str], *args: str) -> dict[str, object]:
    done = admin(env, "prune", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_prune_deletes_only_old_unreferenced_and_dry_run_deletes_nothing(private_pg_url: str, tmp_path: Path) -> None:
    env = base_env(GRADHEALTH_DATA_DIR=str(tmp_path), GRADHEALTH_DATABASE_URL=private_pg_url)
    ids = _world(env)
    settings, store = settings_from(env), blob_store(settings_from(env))
    expected = {
        "analyses": sorted([ids["analysis_old"], ids["analysis_old_failed"]]),
        "runs": [ids["run_old"]],
        "batches": sorted([ids["batch_lonely"], ids["batch_shared"]]),
        "models": [ids["model_old"]],
        "blobs": sorted([ids["sha_lonely"], ids["sha_model_old"]]),
    }
    project = ["--project", ids["project_a"]]
    dry = _prune(env, "--older-than", "30d", "--dry-run", *project)
    assert dry["dry_run"] is True
    assert {k: sorted(dry[k]) for k in expected} == expected  # type: ignore[call-overload]
    with session_scope(settings) as s:
        assert s.get(Analysis, ids["analysis_old"]) is not None and s.get(Batch, ids["batch_lonely"]) is not None
        assert s.scalars(select(Deletion)).all() == []
    assert all(store.exists(ids[k]) for k in ids if k.startswith("sha_"))

    assert _prune(env, "--older-than", "60d", *project)["counts"] == dict.fromkeys(expected, 0)  # nothing that old
    done = _prune(env, "--older-than", "30d", *project)
    assert {k: sorted(done[k]) for k in expected} == expected  # type: ignore[call-overload]
    with session_scope(settings) as s:
        for gone in ("analysis_old", "analysis_old_failed"):
            assert s.get(Analysis, ids[gone]) is None and s.get(StoredReport, ids[gone]) is None
        for kept in ("analysis_old_queued", "analysis_new", "analysis_audited"):
            assert s.get(Analysis, ids[kept]) is not None
        assert s.get(StoredReport, ids["analysis_audited"]) is not None
        assert (
            s.get(Batch, ids["batch_used"]) and s.get(Batch, ids["batch_new"]) and s.get(Batch, ids["batch_shared_b"])
        )
        assert s.get(ModelPackage, ids["model_audit"]) is not None and s.get(ModelPackage, ids["model_old"]) is None
        assert s.get(TrainingRun, ids["run_old"]) is None and s.get(TrainingRun, ids["run_new"]) is not None
        log = s.scalars(select(Deletion)).all()
        assert {(d.kind, d.object_id) for d in log} == {
            *(("analysis", i) for i in expected["analyses"]),
            ("run", ids["run_old"]),
            *(("batch", i) for i in expected["batches"]),
            ("model", ids["model_old"]),
            *(("blob", sha) for sha in expected["blobs"]),
        }
        assert {d.actor for d in log} == {"cli:admin prune"} and {d.reason for d in log} == {"prune"}
    for sha in ("sha_lonely", "sha_model_old"):
        assert not store.exists(ids[sha])
    for sha in ("sha_shared", "sha_used", "sha_new", "sha_model_audit"):
        assert store.exists(ids[sha]), sha  # still referenced by a kept row (sha_shared: project B's)
    again = _prune(env, "--older-than", "30d", *project)
    assert again["counts"] == dict.fromkeys(expected, 0)


@pytest.mark.parametrize("age", ["30", "d", "0d", "1y", "30 days"])
def test_prune_refuses_bad_ages(age: str, tmp_path: Path) -> None:
    done = admin(base_env(GRADHEALTH_DATA_DIR=str(tmp_path)), "prune", "--older-than", age)
    assert done.returncode == 2 and done.stdout == ""
    assert "use a positive whole number and a unit s, m, h, d or w" in done.stderr


def test_revoke_key_by_prefix_and_list_keys(tmp_path: Path) -> None:
    env = base_env(GRADHEALTH_DATA_DIR=str(tmp_path))
    owner = admin(env, "create-project", "team").stdout.strip()
    extra = admin(env, "create-key", "team", "--scope", "read").stdout.strip()
    listed = admin(env, "list-keys", "team")
    assert listed.returncode == 0 and owner not in listed.stdout and extra not in listed.stdout
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [row[1] for row in lines] == [owner[:12], extra[:12]] and all(row[4] == "-" for row in lines)

    revoked = admin(env, "revoke-key", extra[:12])
    assert revoked.returncode == 0, revoked.stderr
    with session_scope(settings_from(env)) as s:
        assert keys.authenticate(s, extra) is None and keys.authenticate(s, owner) is not None
    assert admin(env, "revoke-key", extra).returncode == 0  # idempotent, by the key itself
    after = [line.split("\t") for line in admin(env, "list-keys", "team").stdout.splitlines()]
    assert after[0][4] == "-" and after[1][4] != "-"
    unknown = admin(env, "revoke-key", "ghk_nope")
    assert unknown.returncode == 2 and "no API key matches 'ghk_nope'" in unknown.stderr


def test_revoked_key_is_refused_by_the_running_api(stack: Stack) -> None:
    key = admin(stack.env, "create-key", "ci", "--scope", "read").stdout.strip()
    assert stack.client(key).http.get("/v1/analyses").status_code == 200
    assert admin(stack.env, "revoke-key", key).returncode == 0
    response = stack.client(key).http.get("/v1/analyses")  # the stack runs with GRADHEALTH_KEY_CACHE_SECONDS=0
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]


def test_worker_healthcheck_pings_its_own_node(stack: Stack) -> None:
    def check(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gradhealth.cli", "worker", "--healthcheck", *args]
        return subprocess.run(cmd, env=stack.env, capture_output=True, text=True, timeout=60)

    stack.restart_worker("worker_a")
    alive = check("--name", "worker_a@test")
    assert alive.returncode == 0, alive.stderr
    assert alive.stdout.strip() == "ok: worker_a@test"
    missing = check("--name", "nobody@test")
    assert missing.returncode == 1 and "no answer from nobody@test" in missing.stderr
    embedded = subprocess.run(
        [sys.executable, "-m", "gradhealth.cli", "worker", "--healthcheck"],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert embedded.returncode == 1 and "needs a broker" in embedded.stderr
