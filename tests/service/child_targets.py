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


def _attempt(action: Callable[[], object]) -> dict[str, Any]:
    """Run one escape attempt; report what happened instead of raising."""
    try:
        return {"ok": True, "value": repr(action())[:200]}
    except BaseException as exc:  # noqa: BLE001 - every failure is the expected outcome
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


def read_files(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Try to read each path (secrets, databases, system files) and each staged input."""
    paths = [*payload["paths"], *payload["files"].values()]
    return {path: _attempt(lambda p=path: open(p, "rb").read(64)) for path in paths}


def write_files(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Try to create or overwrite each path, including the staged inputs."""
    paths = [*payload["paths"], *payload["files"].values()]
    return {path: _attempt(lambda p=path: open(p, "wb").write(b"pwned")) for path in paths}


def connect(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Try TCP to a listener of the test, on loopback and on the machine's other address."""
    import socket

    def dial(host: str) -> object:
        with socket.create_connection((host, payload["port"]), timeout=5) as sock:
            return sock.recv(16)

    return {host: _attempt(lambda h=host: dial(h)) for host in payload["hosts"]}


def environment(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """What the child can learn about its process: environment, identity, sys.path, visible pids."""
    import sys

    pids = [name for name in os.listdir("/proc") if name.isdigit()]
    return {"env": dict(os.environ), "uid": os.getuid(), "path": sys.path, "cwd": os.getcwd(), "pids": pids}


def import_module(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Import modules by name: a stray file in the worker's folder must never be picked up."""
    import importlib

    return {name: _attempt(lambda n=name: importlib.import_module(n).__file__) for name in payload["names"]}


def many_threads(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Start threads until the process limit stops us (a fork/thread bomb must not go unbounded)."""
    import threading

    stop = threading.Event()
    started = 0
    try:
        for _ in range(payload["count"]):
            threading.Thread(target=stop.wait, daemon=True).start()
            started += 1
    except RuntimeError as exc:
        return {"started": started, "error": str(exc)}
    finally:
        stop.set()
    return {"started": started, "error": None}


def run_torchscript(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Load and run a TorchScript file with no checks at all: what if a hostile op slipped through?"""
    import torch

    module = torch.jit.load(payload["files"]["model.pt"])
    return _attempt(lambda: module(torch.zeros(1)).tolist())


def limits(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The child's resource limits as the kernel reports them ([soft, hard]; -1 for unlimited)."""
    import resource

    names = {
        "Max processes": resource.RLIMIT_NPROC,
        "Max file size": resource.RLIMIT_FSIZE,
        "Max core file size": resource.RLIMIT_CORE,
        "Max open files": resource.RLIMIT_NOFILE,
    }
    return {name: list(resource.getrlimit(limit)) for name, limit in names.items()}


def run_pt2_unchecked(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Load and call crafted .pt2 archives with no check at all; report which markers appeared here."""
    import warnings

    import torch

    warnings.simplefilter("ignore")
    for name, stage in payload["stages"].items():
        try:
            ep = torch.export.load(payload["files"][name])
            if stage != "load":
                ep.module()(torch.randn(3, 10), torch.randint(0, 5, (3,)))
        except BaseException:  # noqa: BLE001 - a failing payload is fine; only its effects matter
            pass
    return {marker: os.path.exists(marker) for marker in payload["markers"]}
