"""Run untrusted model code in a confined child process with memory and wall-clock limits.

The worker process never runs a client's model or touches CUDA itself: a crash, a hang or
memory exhaustion kills only the child, and the parent turns it into a clear failure message.
Each run gets a fresh interpreter (`python -I -m gradhealth.workers.sandbox_child`), confined by
bubblewrap as sandbox_policy describes: no network, no environment of the worker's, and a file
system that holds only code and the run's own inputs (copied or linked into a private folder that
the child sees read-only at /input). The target is named "module:function", the request goes in on
stdin as JSON and the child answers with JSON messages over an inherited pipe, so neither side
unpickles anything.

Importing torch takes seconds, so one spare child is kept started with torch already imported
(`warm=True`): each run takes the spare and starts the next one, whose import overlaps the run.
A child is used for one run only, like any other.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .sandbox_child import limit_memory
from .sandbox_errors import ChildFailure, Limits, ProgressFn, describe_exit
from .sandbox_policy import INPUT_DIR, Isolation, SandboxUnavailable, bwrap_command, child_env

__all__ = [
    "Aborted",
    "ChildFailure",
    "Isolation",
    "Limits",
    "ProgressFn",
    "default_isolation",
    "limit_memory",
    "run_in_child",
]

TICK_SECONDS = 0.5
PRELOAD = "gradhealth.diagnostics"  # torch and the engine: the slow part of starting a child
_spare: Child | None = None
_spare_lock = threading.Lock()


class Aborted(Exception):
    """The parent's callback asked to stop (e.g. the analysis was taken over by another worker)."""


@dataclass
class Child:
    """A started child: its process, the pipe it answers on, and its private folder on the host."""

    process: subprocess.Popen[bytes]
    receiver: Connection
    isolation: Isolation
    root: Path  # root/input is the child's /input; root/home its cwd when not namespaced

    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    def inside(self, name: str) -> str:
        """Where the child sees the input file `name`."""
        return f"{INPUT_DIR}/{name}" if self.isolation.sandboxed else str(self.input_dir / name)


def default_isolation() -> Isolation:
    """Namespaced unless the operator explicitly set GRADHEALTH_UNSAFE_NO_SANDBOX."""
    from gradhealth.store.settings import get_settings

    return Isolation(sandboxed=not get_settings().unsafe_no_sandbox)


def _spawn(isolation: Isolation) -> Child:
    """Start a child that preloads torch and then waits for its request on stdin."""
    root = Path(tempfile.mkdtemp(prefix="gradhealth-sandbox-"))
    (root / "input").mkdir()
    (root / "home").mkdir()
    paths = [str(p) for p in isolation.import_roots]
    command = [sys.executable, "-I", "-m", "gradhealth.workers.sandbox_child"]
    read_fd, write_fd = os.pipe()
    try:
        argv = [*command, str(write_fd), "0" if isolation.sandboxed else str(os.getpid()), PRELOAD, *paths]
        if isolation.sandboxed:
            argv = bwrap_command(argv, root / "input", isolation)
            home = "/tmp"
        else:
            home = str(root / "home")
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, pass_fds=(write_fd,), env=child_env(home), cwd=root / "home"
        )
    except BaseException:
        os.close(read_fd)
        shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        os.close(write_fd)
    return Child(process, Connection(read_fd, writable=False), isolation, root)


def _discard(child: Child) -> None:
    child.receiver.close()
    if child.process.poll() is None:
        child.process.kill()
    try:
        child.process.wait(timeout=10)
    finally:
        shutil.rmtree(child.root, ignore_errors=True)


def _take(isolation: Isolation) -> Child:
    """The warm spare when there is a live one confined the same way, else a new child."""
    global _spare
    with _spare_lock:
        child, _spare = _spare, None
    if child is not None and child.process.poll() is None and child.isolation == isolation:
        return child
    if child is not None:
        _discard(child)
    return _spawn(isolation)


def prepare_spare(isolation: Isolation | None = None) -> None:
    """Start a spare child now (worker start-up, and after each run) so the next run starts warm."""
    global _spare
    isolation = isolation or default_isolation()
    old = None
    with _spare_lock:
        if _spare is None or _spare.process.poll() is not None or _spare.isolation != isolation:
            old, _spare = _spare, _spawn(isolation)
    if old is not None:
        _discard(old)


@atexit.register
def _drop_spare() -> None:
    global _spare
    with _spare_lock:
        child, _spare = _spare, None
    if child is not None:
        _discard(child)


def _stage(child: Child, files: Mapping[str, Path]) -> dict[str, str]:
    """Hard-link (else copy) the run's inputs into the child's private folder; read-only there."""
    seen: dict[str, str] = {}
    for name, source in files.items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"input names are plain file names, got {name!r}")
        target = child.input_dir / name
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        seen[name] = child.inside(name)
    return seen


def run_in_child(
    target: str,
    payload: dict[str, Any],
    limits: Limits,
    on_progress: Callable[[str | None, float | None], bool],
    *,
    files: Mapping[str, Path] | None = None,
    warm: bool = True,
    isolation: Isolation | None = None,
) -> dict[str, Any]:
    """Run target ("module:function", called as f(payload, progress)) in a confined child.

    `files` ({name: host path}) are the only files the child can read; it finds their paths in
    payload["files"][name]. on_progress(phase, fraction) is called for each progress message and
    at least every TICK_SECONDS with (None, None); returning False kills the child and raises
    Aborted. Raises ChildFailure for input errors, crashes, out-of-memory, timeouts and a sandbox
    that cannot start (code "sandbox_unavailable").
    """
    isolation = isolation or default_isolation()
    try:
        child = _take(isolation) if warm else _spawn(isolation)
        if warm:
            prepare_spare(isolation)  # the next run's torch import overlaps this run
    except SandboxUnavailable as exc:
        raise ChildFailure("sandbox_unavailable", str(exc)) from None
    deadline = time.monotonic() + limits.time_s
    try:
        payload = {**payload, "memory_mb": limits.memory_mb, "files": _stage(child, files or {})}
        stdin = child.process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"target": target, "payload": payload}).encode())
            stdin.close()
        except BrokenPipeError:
            pass  # the child died at start-up; its exit status says why
        return _await_result(child, payload, limits, deadline, on_progress)
    finally:
        _discard(child)


def _await_result(
    child: Child,
    payload: dict[str, Any],
    limits: Limits,
    deadline: float,
    on_progress: Callable[[str | None, float | None], bool],
) -> dict[str, Any]:
    """Relay progress until the child answers, dies or runs out of time."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ChildFailure(
                "timeout",
                f"the analysis took longer than the limit of {limits.time_s:g} s and was stopped; "
                "analyse a smaller batch or model, or raise GRADHEALTH_ANALYSIS_TIME_LIMIT",
            )
        if child.receiver.poll(min(remaining, TICK_SECONDS)):
            try:
                message = json.loads(child.receiver.recv_bytes())
            except EOFError:
                break
            if message["type"] == "result":
                return dict(message["result"])
            elif message["type"] == "error":
                raise ChildFailure(message["code"], message["message"])
            elif not on_progress(message["phase"], message["fraction"]):
                raise Aborted()
        elif not on_progress(None, None):
            raise Aborted()
    try:
        child.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    code = child.process.returncode
    if child.isolation.sandboxed and code is not None and code > 128:
        code = 128 - code  # bwrap exits 128+N when its child dies of signal N; report the signal
    raise describe_exit(code, payload)
