"""A cpu-only worker runs no uploaded model, so it starts without the sandbox; a gpu worker refuses (fail closed)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import redis

from .conftest import REDIS_URL, base_env
from .procs import Proc, wait_worker_ready


def test_only_workers_of_the_gpu_queue_need_the_sandbox(tmp_path: Path) -> None:
    no_bwrap = tmp_path / "bin"  # a PATH with python's folder but no bwrap: the sandbox cannot start
    no_bwrap.mkdir()
    prefix = f"gradhealth_test_{secrets.token_hex(6)}:"
    env = base_env(
        GRADHEALTH_DATA_DIR=str(tmp_path / "data"),
        GRADHEALTH_BROKER_URL=REDIS_URL,
        GRADHEALTH_BROKER_KEY_PREFIX=prefix,
        PATH=f"{no_bwrap}:{os.path.dirname(sys.executable)}",
    )
    cmd = [sys.executable, "-m", "gradhealth.cli", "worker", "--queues", "gpu,cpu", "--name", "gpu@roles"]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "refusing to start" in refused.stderr and "bubblewrap" in refused.stderr

    worker = Proc("cpu-only", ["worker", "--queues", "cpu", "--name", "cpu@roles"], env, tmp_path)
    try:
        wait_worker_ready(worker)
        assert worker.alive()
    finally:
        worker.stop()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()
