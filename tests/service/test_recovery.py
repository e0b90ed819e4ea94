"""The database is the source of truth: dead workers, lost messages and redeliveries."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from gradhealth.store import keys
from gradhealth.store.analyses import RUN_ANALYSIS
from gradhealth.store.celery_app import enqueue
from gradhealth.store.db import session_scope
from gradhealth.store.models import Analysis, StoredReport, utcnow
from sqlalchemy import func, select

from .artifacts import Files
from .conftest import Stack
from .procs import pid_alive, sandbox_children, wait_for

ENGINE_PHASES = ("loaded", "prepare", "forward_backward", "statistics")


def row(stack: Stack, analysis_id: str) -> Analysis:
    with session_scope(stack.settings) as session:
        found = session.get(Analysis, analysis_id)
        assert found is not None
        return found


def report_rows(stack: Stack, analysis_id: str) -> int:
    with session_scope(stack.settings) as session:
        query = select(func.count()).select_from(StoredReport).where(StoredReport.analysis_id == analysis_id)
        return int(session.scalar(query) or 0)


@pytest.mark.slow
@pytest.mark.blob_backends  # local disk, and S3 with workers that share no disk
def test_sigkilled_worker_mid_analysis_still_completes_exactly_once(stack: Stack, files: Files) -> None:
    api = stack.client()
    analysis_id = api.analyze(files.models["slow"], files.batches["slow"])["id"]

    def in_engine() -> dict | None:  # type: ignore[type-arg]
        body = api.status(analysis_id)
        assert body["status"] != "succeeded", "finished before the worker could be killed"
        return body if body["status"] == "running" and body["progress"]["phase"] in ENGINE_PHASES else None

    wait_for(in_engine, 90, "the analysis to be inside the engine", interval=0.05)
    victim_name = row(stack, analysis_id).worker
    assert victim_name is not None
    victim = stack.workers[victim_name.split("@")[0]]
    children = sandbox_children(victim.pid)
    assert children, "the model should run in a sandbox child of the worker"
    try:
        victim.kill()
        wait_for(lambda: not any(pid_alive(pid) for pid in children), 10, "the sandbox to die with its worker")
        done = api.wait(analysis_id, timeout=120)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2
        final = row(stack, analysis_id)
        assert final.worker != victim_name
        assert report_rows(stack, analysis_id) == 1
    finally:
        stack.restart_worker(victim.name)
        api.close()


@pytest.mark.slow
def test_analysis_whose_message_was_lost_is_reenqueued(stack: Stack, files: Files) -> None:
    api = stack.client()
    model = api.upload("models", files.models["mlp_dead_relu_negative_bias"])["id"]
    batch = api.upload("batches", files.batches["mlp_dead_relu_negative_bias"])["id"]
    with session_scope(stack.settings) as session:  # a row whose message never reached the broker
        lost = Analysis(
            project_id=keys.find_project(session, "ci").id,
            model_id=model,
            batch_id=batch,
            options=json.dumps({}),
            enqueued_at=utcnow() - timedelta(minutes=5),
        )
        session.add(lost)
        session.flush()
        lost_id = lost.id
    done = api.wait(lost_id, timeout=60)
    assert done["status"] == "succeeded" and done["attempts"] == 1
    api.close()


@pytest.mark.slow
def test_redelivered_message_never_writes_a_second_report(stack: Stack, files: Files) -> None:
    api = stack.client()
    analysis_id = api.analyze(files.models["deep_sigmoid_mlp"], files.batches["deep_sigmoid_mlp"])["id"]
    assert api.wait(analysis_id)["status"] == "succeeded"
    before = row(stack, analysis_id)
    for _ in range(2):
        assert enqueue(RUN_ANALYSIS, analysis_id, stack.settings)
    wait_for(
        lambda: sum(f"analysis {analysis_id}: nothing to do" in w.tail(400) for w in stack.workers.values()) >= 1,
        30,
        "a worker to receive the redelivered message",
    )
    after = row(stack, analysis_id)
    assert report_rows(stack, analysis_id) == 1
    assert (after.attempts, after.finished_at, after.status) == (before.attempts, before.finished_at, "succeeded")
    api.close()
