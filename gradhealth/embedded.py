"""`gradhealth serve`: the API in this process and a supervised worker process, one data folder.

The embedded broker is kombu's filesystem transport under the data folder: the worker is the
very same `gradhealth worker` code as in a distributed deployment, only the broker URL differs,
and nothing else has to be installed or started. Its messages are deleted when received (no
acks), which is safe because the database is the source of truth: the recovery sweep re-sends
any analysis left queued or running by a lost message or a dead worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

KEY_FILE = "api_key"
LOCAL_PROJECT = "local"
PARENT_ENV = "GRADHEALTH_EXIT_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def exit_with_parent() -> None:
    """In an embedded worker: have the kernel send SIGTERM when `gradhealth serve` dies (Linux)."""
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit():
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # serve died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown; exit through `finally` blocks then."""
    raise SystemExit(128 + signum)


def ensure_local_key(settings: Any) -> tuple[str, bool]:
    """The local project's key: created on first start and kept in DATA_DIR/api_key (mode 600)."""
    from gradhealth.store import keys
    from gradhealth.store.db import session_scope

    path = Path(settings.data_dir) / KEY_FILE
    if path.is_file():
        return path.read_text().strip(), False
    with session_scope(settings) as session:
        try:
            project = keys.find_project(session, LOCAL_PROJECT)
        except keys.AdminError:
            project = keys.create_project(session, LOCAL_PROJECT)
        key = keys.create_key(session, project, ["admin"])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, True


class WorkerSupervisor:
    """Keep one `gradhealth worker` child running; restart it (with back-off) if it dies."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gradhealth-worker-supervisor", daemon=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        name = f"embedded-{os.getpid()}@{socket.gethostname()}"
        command = [sys.executable, "-m", "gradhealth.cli", "worker", "--name", name]
        return subprocess.Popen(command, env=self.env)

    def _run(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            self.process = self._spawn()
            started = time.monotonic()
            self.process.wait()
            if self._stopping.is_set():
                return
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
            print(
                f"gradhealth: worker exited ({self.process.returncode}); restarting in {delay:.0f} s", file=sys.stderr
            )
            self._stopping.wait(delay)

    def start(self) -> None:
        """Start the worker and its watchdog."""
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (the running analysis is re-queued by the sweep if it cannot finish)."""
        self._stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve(settings: Any, host: str, port: int) -> int:
    """Migrate, print the key, start the worker, run the API until interrupted."""
    import uvicorn

    from gradhealth.api.main import create_app
    from gradhealth.store.db import migrate

    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    migrate(settings)
    key, created = ensure_local_key(settings)
    where = Path(settings.data_dir) / KEY_FILE
    if created:
        print(f"gradhealth: created project '{LOCAL_PROJECT}'; its API key (also in {where}):", file=sys.stderr)
        print(key, flush=True)
    else:
        print(f"gradhealth: API key for project '{LOCAL_PROJECT}' is in {where}", file=sys.stderr)
    print(f"gradhealth: serving on http://{host}:{port} (docs at /docs); data in {settings.data_dir}", file=sys.stderr)
    env = {**os.environ, "GRADHEALTH_DATA_DIR": str(settings.data_dir), PARENT_ENV: str(os.getpid())}
    if not settings.public_url:  # webhook links point at this server unless told otherwise
        shown = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
        env["GRADHEALTH_PUBLIC_URL"] = f"http://{shown}:{port}"
    supervisor = WorkerSupervisor(env)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    supervisor.start()
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower())
    finally:
        supervisor.stop()
    return 0
