"""Run untrusted model code in a child process with memory and wall-clock limits.

The worker process never runs a client's model or touches CUDA itself: a crash, a hang or
memory exhaustion kills only the child, and the parent turns it into a clear failure message.
Each run gets a fresh interpreter (`python -m gradhealth.workers.sandbox_child`, like
multiprocessing's spawn but without re-running the parent's __main__). The target is named
"module:function", the request goes in on stdin as JSON and the child answers with JSON messages
over an inherited pipe, so neither side unpickles anything.

Importing torch takes seconds, so one spare child is kept started with torch already imported
(`warm=True`): each run takes the spare and starts the next one, whose import overlaps the run.
A child is used for one run only, like any other.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .sandbox_child import limit_memory
from .sandbox_errors import ChildFailure, Limits, ProgressFn, describe_exit

__all__ = ["Aborted", "ChildFailure", "Limits", "ProgressFn", "limit_memory", "run_in_child"]

TICK_SECONDS = 0.5
PRELOAD = "gradhealth.diagnostics"  # torch and the engine: the slow part of starting a child
Child = tuple[subprocess.Popen[bytes], Connection]
_spare: Child | None = None
_spare_lock = threading.Lock()


class Aborted(Exception):
    """The parent's callback asked to stop (e.g. the analysis was taken over by another worker)."""


def _spawn() -> Child:
    """Start a child that preloads torch and then waits for its request on stdin."""
    read_fd, write_fd = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "gradhealth.workers.sandbox_child", str(write_fd), str(os.getpid()), PRELOAD],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            env=env,
        )
    finally:
        os.close(write_fd)
    return process, Connection(read_fd, writable=False)


def _discard(child: Child) -> None:
    process, receiver = child
    receiver.close()
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def _take() -> Child:
    """The warm spare when there is a live one, else a new child."""
    global _spare
    with _spare_lock:
        child, _spare = _spare, None
    if child is not None and child[0].poll() is None:
        return child
    if child is not None:
        _discard(child)
    return _spawn()


def prepare_spare() -> None:
    """Start a spare child now (worker start-up, and after each run) so the next run starts warm."""
    global _spare
    with _spare_lock:
        if _spare is None or _spare[0].poll() is not None:
            _spare = _spawn()


@atexit.register
def _drop_spare() -> None:
    global _spare
    with _spare_lock:
        child, _spare = _spare, None
    if child is not None:
        _discard(child)


def run_in_child(
    target: str,
    payload: dict[str, Any],
    limits: Limits,
    on_progress: Callable[[str | None, float | None], bool],
    *,
    warm: bool = True,
) -> dict[str, Any]:
    """Run target ("module:function", called as f(payload, progress)) in a child; return its result.

    on_progress(phase, fraction) is called for each progress message and at least every
    TICK_SECONDS with (None, None); returning False kills the child and raises Aborted.
    Raises ChildFailure for input errors, crashes, out-of-memory and timeouts.
    """
    payload = {**payload, "memory_mb": limits.memory_mb}
    process, receiver = _take() if warm else _spawn()
    if warm:
        prepare_spare()  # the next run's torch import overlaps this run
    deadline = time.monotonic() + limits.time_s
    try:
        assert process.stdin is not None
        try:
            process.stdin.write(json.dumps({"target": target, "payload": payload}).encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # the child died at start-up; its exit status says why
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildFailure(
                    "timeout",
                    f"the analysis took longer than the limit of {limits.time_s:g} s and was stopped; "
                    "analyse a smaller batch or model, or raise GRADHEALTH_ANALYSIS_TIME_LIMIT",
                )
            if receiver.poll(min(remaining, TICK_SECONDS)):
                try:
                    message = json.loads(receiver.recv_bytes())
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
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        raise describe_exit(process.returncode, payload)
    finally:
        _discard((process, receiver))
