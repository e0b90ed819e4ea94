"""The sandbox child: a fresh interpreter that runs one target and reports back in JSON.

Started as `python -I -m gradhealth.workers.sandbox_child FD PARENT_PID PRELOAD [IMPORT_ROOT…]`
(inside bwrap, see sandbox_policy). It caps its own resources, imports the PRELOAD modules (torch)
first, then waits for one request {"target", "payload"} on stdin, so a spare child can be started
ahead of time and an analysis does not wait for torch to import. PARENT_PID 0 means bwrap's
--die-with-parent already ties the child to the worker.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from gradhealth.diagnostics.errors import CODED_ERRORS

from .sandbox_errors import ChildFailure, ChildTarget, oom_message

_PR_SET_PDEATHSIG = 1
MAX_FILE_BYTES = 256 * 2**20  # RLIMIT_FSIZE: the child has no business writing big files
MAX_OPEN_FILES = 1024  # RLIMIT_NOFILE
MAX_PROCESSES = 512  # RLIMIT_NPROC (threads count): torch's pools fit, a fork bomb does not


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills us when the worker dies, so no orphan keeps running a model."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def limit_resources() -> None:
    """Cap file size, open files and processes, and disable core dumps (they could leak memory)."""
    import resource

    for limit, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, MAX_FILE_BYTES),
        (resource.RLIMIT_NOFILE, MAX_OPEN_FILES),
        (resource.RLIMIT_NPROC, MAX_PROCESSES),
    ):
        _, hard = resource.getrlimit(limit)
        soft = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (soft, soft))


def limit_memory(memory_mb: int) -> None:
    """Cap the address space (RLIMIT_AS), so the child gets MemoryError instead of the OOM killer."""
    if memory_mb <= 0:
        return
    import resource

    limit = memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _child_main(target_name: str, payload: dict[str, Any], conn: Connection) -> None:
    """Run the target; report progress and the result (or a classified error) as JSON."""
    module, _, function = target_name.partition(":")
    target: ChildTarget = getattr(importlib.import_module(module), function)

    def send(message: dict[str, Any]) -> None:
        conn.send_bytes(json.dumps(message).encode())

    def progress(phase: str, fraction: float) -> None:
        send({"type": "progress", "phase": phase, "fraction": float(fraction)})

    try:
        result = target(payload, progress)
        send({"type": "result", "result": result})
    except ChildFailure as exc:
        send({"type": "error", "code": exc.code, "message": exc.message})
    except CODED_ERRORS as exc:  # the engine's typed errors carry their own code and message
        send({"type": "error", "code": exc.code, "message": str(exc)})
    except MemoryError:
        send({"type": "error", "code": "out_of_memory", "message": oom_message(payload)})
    except Exception as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]
        send({"type": "error", "code": "engine_error", "message": f"the analysis failed: {detail}"})
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()


def main(argv: list[str]) -> None:
    """Preload, then run the one request that arrives on stdin (none: exit quietly)."""
    fd, parent_pid, preload, *import_roots = argv
    if int(parent_pid):
        _die_with_parent(int(parent_pid))
    limit_resources()
    sys.path.extend(str(os.path.dirname(root)) for root in import_roots)
    for module in filter(None, preload.split(",")):
        importlib.import_module(module)
    raw = sys.stdin.buffer.read()
    if not raw:
        return  # the parent shut down without using this spare
    request = json.loads(raw)
    _child_main(request["target"], request["payload"], Connection(int(fd), readable=False))
    os._exit(0)  # everything is sent; skip tearing down torch (hundreds of ms)


if __name__ == "__main__":
    main(sys.argv[1:])
