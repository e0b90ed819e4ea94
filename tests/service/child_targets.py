"""Functions the sandbox tests run in a child process (named as "module:function")."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from gradhealth.diagnostics.errors import InputError
from gradhealth.workers.sandbox import limit_memory

Progress = Callable[[str, float], None]


def ok(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    for i in range(3):
        progress(f"step{i}", i / 3)
    return {"echo": payload["value"], "pid": os.getpid()}


def hang(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    progress("hanging", 0.5)
    time.sleep(3600)
    return {}


def segfault(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    progress("crashing", 0.5)
    os.kill(os.getpid(), signal.SIGSEGV)
    return {}


def exhaust_memory(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    limit_memory(payload["memory_mb"])
    hoard = [bytearray(2**26) for _ in range(1000)]  # 64 GiB if it were allowed
    return {"n": len(hoard)}


def bad_input(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    raise InputError("the batch has no 'targets' tensor; found keys ['x']")


def bug(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    return {"value": 1 / 0}
