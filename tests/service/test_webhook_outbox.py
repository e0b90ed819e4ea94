"""The webhook outbox on a stack of its own whose broker (a throwaway redis-server) the tests kill and restart.

The shared Redis on 6379 serves everyone's tests, so it is never stopped: this module starts its own
`redis-server --save '' --appendonly no` (a kill loses every queued message, the worst case), its own
PostgreSQL database, one API and two workers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery

from .conftest import admin, base_env
from .procs import Proc, free_port, wait_for, wait_ready, wait_worker_ready
from .receiver import Receiver
from .test_runs_api import LAYERS, batch_body, post_logs

redis = pytest.importorskip("redis")
psycopg = pytest.importorskip("psycopg")


class ThrowawayRedis:
    """A redis-server of this module's own on a fixed free port, so it can be killed and come back."""

    def __init__(self, root: Path) -> None:
        self.port, self.root = free_port(), root
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.root / "redis.log", "ab") as log:
            self.popen = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._answers, 30, "the throwaway redis-server to answer")

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: the broker vanishes with whatever it held."""
        assert self.popen is not None
        self.popen.kill()
        self.popen.wait(10)


@dataclass
class OwnStack:
    broker: ThrowawayRedis
    api: Proc
    workers: list[Proc]
    http: httpx.Client

    def logs(self, worker: Proc, since: int = 0) -> str:
        return worker.log.read_text(errors="replace")[since:]


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory, private_pg_url: str) -> Iterator[OwnStack]:
    root = tmp_path_factory.mktemp("outbox")
    broker = ThrowawayRedis(root)
    env = base_env(
        GRADHEALTH_DATA_DIR=str(root / "data"),
        GRADHEALTH_DATABASE_URL=private_pg_url,
        GRADHEALTH_BROKER_URL=broker.url,
        GRADHEALTH_WARM_SANDBOX="0",
        GRADHEALTH_WEBHOOK_TIMEOUT_SECONDS="3",
        GRADHEALTH_WEBHOOK_LEASE_SECONDS="3",  # a lost message is re-sent after max(lease, timeout + 5) = 8 s
        GRADHEALTH_WEBHOOK_BACKOFF_SECONDS="2",
    )
    created = admin(env, "create-project", "outbox")
    assert created.returncode == 0, created.stderr
    port = free_port()
    procs = [Proc("outbox_api", ["api", "--host", "127.0.0.1", "--port", str(port)], env, root)]
    try:
        procs += [
            Proc(f"outbox_{n}", ["worker", "--name", f"outbox_{n}@test", "--queues", f"gpu,cpu,only_{n}"], env, root)
            for n in ("a", "b")
        ]
        wait_ready(f"http://127.0.0.1:{port}", procs[0])
        for worker in procs[1:]:
            wait_worker_ready(worker)
        headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as http:
            yield OwnStack(broker, procs[0], procs[1:], http)
    finally:
        for proc in procs:
            proc.stop()
        if broker.popen is not None and broker.popen.poll() is None:
            broker.kill()


def bad_run(own: OwnStack, receiver: Receiver) -> str:
    """A run with this receiver as its webhook, then a batch that makes it go bad (the notifying event)."""
    response = own.http.post("/v1/runs", json={"name": "outbox", "layers": LAYERS, "webhook_url": receiver.url})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    bad = batch_body(0, 0, 20)
    bad["loss"][5:] = [float("nan")] * 15
    for row in bad["metrics"]["nonfinite"][5:]:
        row[1] = 1.0
    ack = post_logs(own.http, run_id, bad)
    assert ack.status_code == 200 and ack.json()["health"] in ("error", "critical"), ack.text
    return str(run_id)


def assert_consumes(own: OwnStack, worker: Proc) -> None:
    """Send a harmless task to this worker's own queue and wait until it has run it."""
    app = Celery("probe", broker=own.broker.url, set_as_current=False)
    queue = "only_" + worker.name.removeprefix("outbox_")
    task_id = app.send_task("gradhealth.sweep", queue=queue).id
    app.close()
    wait_for(
        lambda: f"gradhealth.sweep[{task_id}] succeeded" in own.logs(worker),
        120,
        f"{worker.name} to consume from its own queue after the outage",
        procs=(worker,),
    )


def deliveries(own: OwnStack, run_id: str) -> list[dict[str, Any]]:
    return list(own.http.get(f"/v1/runs/{run_id}/deliveries").json()["data"])


def delivered(own: OwnStack, run_id: str) -> bool:
    rows = deliveries(own, run_id)
    return bool(rows) and rows[0]["ok"] and not any(r["pending"] for r in rows)


def test_a_notification_made_while_the_broker_is_down_is_delivered_when_it_returns(own: OwnStack) -> None:
    receiver = Receiver()
    try:
        own.broker.kill()
        run_id = bad_run(own, receiver)  # notified_at and its delivery row commit together; the enqueue fails
        [row] = deliveries(own, run_id)
        assert (row["attempt"], row["pending"], row["ok"]) == (1, True, False)
        wait_for(lambda: "could not enqueue" in own.api.tail(400), 60, "the API to report the failed enqueue")
        assert receiver.requests == []
        own.broker.start()
        [hook] = receiver.wait_for(1, timeout=120)
        assert hook.headers["x-gradhealth-delivery"] == row["id"]
        wait_for(lambda: delivered(own, run_id), 60, "the delivery to be recorded", procs=tuple(own.workers))
        assert all(worker.alive() for worker in own.workers)
    finally:
        receiver.close()


def test_broker_killed_with_retries_pending_and_a_send_in_flight(own: OwnStack) -> None:
    """No worker holds a countdown task, so none exits, and every delivery completes once the broker is back."""
    failing, slow = Receiver(500), Receiver()
    try:
        retried = bad_run(own, failing)
        wait_for(
            lambda: [(r["attempt"], r["pending"]) for r in deliveries(own, retried)] == [(2, True), (1, False)],
            60,
            "attempt 1 to fail and attempt 2 to wait in the database",
            procs=tuple(own.workers),
        )
        slow.gate.clear()  # the next POST is held open: a worker is mid-task when the broker dies
        in_flight = bad_run(own, slow)
        slow.wait_for(1, timeout=60)
        mark = {w.name: len(own.logs(w)) for w in own.workers}  # earlier tests' outages are in the logs too
        own.broker.kill()
        # A worker idle when the broker died retries without limit ("Trying again ... (n/None)").
        wait_for(
            lambda: any("/None)" in own.logs(w, mark[w.name]) for w in own.workers),
            60,
            "a worker to keep reconnecting with no retry limit",
            procs=tuple(own.workers),
        )
        wait_for(
            lambda: any(
                "could not enqueue gradhealth.deliver_run_webhook" in own.logs(w, mark[w.name]) for w in own.workers
            ),
            60,
            "a due retry to meet the missing broker in a ticker",
            procs=tuple(own.workers),
        )
        slow.gate.set()
        own.broker.start()
        for run_id in (retried, in_flight):
            wait_for(lambda r=run_id: delivered(own, r), 120, f"run {run_id}'s delivery", procs=tuple(own.workers))
        assert len(failing.requests) == 2 and 1 <= len(slow.requests) <= 2
        assert all(worker.alive() for worker in own.workers), [w.tail() for w in own.workers]
        assert not any("Unrecoverable error" in own.logs(w) for w in own.workers)
        for worker in own.workers:  # alive is not enough: each one takes tasks again
            assert_consumes(own, worker)
    finally:
        failing.close()
        slow.close()
