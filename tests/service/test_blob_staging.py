"""Partial uploads of a killed API process are removed at the next start; live processes' uploads are not."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gradhealth.store.blobs import STAGING_GRACE_SECONDS, LocalBlobStore

from .conftest import Embedded
from .procs import wait_for, wait_ready

STAGE_AND_WAIT = """
import sys, time
from pathlib import Path
from gradhealth.store.blobs import LocalBlobStore
staged = LocalBlobStore(Path(sys.argv[1]), 1 << 20).stage()
staged.write(b"partial"); staged.file.flush()
print(staged.path, flush=True)
time.sleep(600)
"""


def staging_process(root: Path) -> tuple[subprocess.Popen[str], Path]:
    """Another process mid-upload: it staged a few bytes and is still receiving."""
    proc = subprocess.Popen([sys.executable, "-c", STAGE_AND_WAIT, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_sweep_keeps_live_processes_uploads_and_removes_dead_ones(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path, 1 << 20)
    mine = store.stage()
    mine.write(b"mine")
    live, live_file = staging_process(tmp_path)
    dead, dead_file = staging_process(tmp_path)
    old_stray, new_stray = tmp_path / "tmp" / "upload-old", tmp_path / "tmp" / "upload-new"
    for stray in (old_stray, new_stray):
        stray.write_bytes(b"x")
    os.utime(old_stray, (time.time() - STAGING_GRACE_SECONDS - 60,) * 2)
    try:
        assert store.sweep_staging() == 1
        assert not old_stray.exists() and new_stray.is_file()
        assert live_file.is_file() and dead_file.is_file() and mine.path.is_file()
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        assert LocalBlobStore(tmp_path, 1 << 20).sweep_staging() == 1
        assert not dead_file.parent.exists()
        assert live_file.is_file() and mine.path.is_file() and new_stray.is_file()
        store.commit(mine)  # this process's folder still works after a sweep
        assert store.exists(mine.sha256)
    finally:
        for proc in (live, dead):
            proc.kill()
            proc.wait(10)


def partial_upload(served: Embedded, total: int, sent: int) -> socket.socket:
    """Send the headers and the first `sent` bytes of a `total`-byte upload, then leave it hanging."""
    host, port = served.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = (
        f"POST /v1/batches HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {served.key}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"\0" * sent)
    return sock


def staged_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "blobs" / "tmp").rglob("upload-*") if p.is_file()]


def test_kill_9_mid_upload_leaves_nothing_after_restart(embedded: Embedded) -> None:
    before = set(staged_files(embedded.data_dir))
    sock = partial_upload(embedded, total=3 * 2**20, sent=2**20)
    try:
        wait_for(
            lambda: [p for p in staged_files(embedded.data_dir) if p not in before and p.stat().st_size > 0],
            30,
            "the upload to be staged",
            procs=(embedded.proc,),
        )
        embedded.proc.kill()
    finally:
        sock.close()
    assert staged_files(embedded.data_dir), "the killed server should have left its partial upload behind"
    embedded.proc.start()
    wait_ready(embedded.base_url, embedded.proc)
    assert staged_files(embedded.data_dir) == []
    assert embedded.client().http.get("/v1/runs").status_code == 200
