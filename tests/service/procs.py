"""Start, wait for and always stop the real server processes the service tests talk to."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

READY_TIMEOUT = 90.0


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """A `python -m gradhealth.cli ...` subprocess with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.args, self.env = name, args, env
        self.log = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """(Re)start the process; output is appended to its log."""
        handle = open(self.log, "ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "gradhealth.cli", *self.args],
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        """The end of the log, for assertion messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a crashing machine would."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self.popen is not None
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL the whole process group if it does not exit in time."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(10)


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1, procs: tuple[Proc, ...] = ()
) -> object:
    """Poll until condition() is truthy; fail with the processes' logs if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for proc in procs:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        time.sleep(interval)
    logs = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in procs)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def wait_ready(base_url: str, proc: Proc, path: str = "/readyz") -> None:
    """Wait until the server answers 200 on path."""

    def ready() -> bool:
        try:
            return httpx.get(base_url + path, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, READY_TIMEOUT, f"{proc.name} to be ready", interval=0.2, procs=(proc,))


def wait_worker_ready(proc: Proc) -> None:
    """A Celery worker logs 'ready.' once it consumes."""
    wait_for(lambda: " ready." in proc.tail(200), READY_TIMEOUT, f"{proc.name} to be ready", procs=(proc,))


def sandbox_children(parent_pid: int) -> list[int]:
    """Pids of analysis sandboxes (`gradhealth.workers.sandbox`) whose parent is parent_pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"gradhealth.workers.sandbox" in cmdline and ppid == parent_pid:
            found.append(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
