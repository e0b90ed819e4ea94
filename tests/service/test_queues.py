"""Analyses go to the gpu queue only and light work to the cpu queue only (real Redis, own key prefix)."""

from __future__ import annotations

import secrets

import pytest
from gradhealth.store.celery_app import CPU_QUEUE, GPU_QUEUE, make_celery
from gradhealth.store.settings import Settings
from gradhealth.store.task_names import RUN_ANALYSIS, SWEEP

from .conftest import REDIS_URL

redis = pytest.importorskip("redis")


@pytest.mark.parametrize(("task", "queue"), [(RUN_ANALYSIS, GPU_QUEUE), (SWEEP, CPU_QUEUE)])
def test_each_task_lands_in_its_queue_once(task: str, queue: str) -> None:
    prefix = f"gradhealth_test_{secrets.token_hex(6)}:"
    app = make_celery(Settings(broker_url=REDIS_URL, broker_key_prefix=prefix))
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        for name in (GPU_QUEUE, CPU_QUEUE):  # both queues exist and are bound, as on a worker
            app.amqp.queues[name].bind(app.connection_for_write().default_channel).declare()
        app.send_task(task, args=["id"], queue=queue)
        lengths = {name: client.llen(prefix + name) for name in (GPU_QUEUE, CPU_QUEUE)}
        assert lengths == {queue: 1, ({GPU_QUEUE, CPU_QUEUE} - {queue}).pop(): 0}
        assert {q.name: q.exchange.name for q in app.amqp.queues.values()} == {
            GPU_QUEUE: GPU_QUEUE,
            CPU_QUEUE: CPU_QUEUE,
        }
    finally:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        app.close()
