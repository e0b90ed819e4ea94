"""A hostile model that got past every check still cannot read, write, reach or learn anything.

Each test runs Python (and TorchScript with I/O ops) inside the real bubblewrap sandbox and tries
what an attacker would: the data folder's key file and database, /etc/passwd, writing files, TCP to
a local listener, a stray module in the worker's folder, the worker's secrets in its environment.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from gradhealth.workers.sandbox import ChildFailure, Isolation, Limits, run_in_child
from gradhealth.workers.sandbox_child import MAX_FILE_BYTES, MAX_PROCESSES
from gradhealth.workers.sandbox_policy import SANDBOX_UID, SandboxUnavailable, check_sandbox

TARGETS = "tests.service.child_targets"
TESTS_DIR = Path(__file__).resolve().parents[1]
SANDBOXED = Isolation(import_roots=(TESTS_DIR,))
UNSANDBOXED = Isolation(sandboxed=False, import_roots=(TESTS_DIR,))
SECRET = "gh_live_0123456789abcdef"


def run(name: str, isolation: Isolation = SANDBOXED, files: dict[str, Path] | None = None, **payload: Any) -> Any:
    """Run one target in a fresh child (cold: the environment is read at spawn time)."""
    limits = Limits(time_s=120, memory_mb=0)
    return run_in_child(
        f"{TARGETS}:{name}", payload, limits, lambda *_: True, files=files, warm=False, isolation=isolation
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder as `gradhealth serve` leaves it: a mode-600 key file and a SQLite database."""
    folder = tmp_path / "data"
    folder.mkdir()
    key = folder / "api_key"
    key.write_text(SECRET + "\n")
    key.chmod(0o600)
    with sqlite3.connect(folder / "gradhealth.db") as db:
        db.execute("CREATE TABLE api_keys (secret TEXT)")
        db.execute("INSERT INTO api_keys VALUES (?)", (SECRET,))
    return folder


def test_child_reads_only_its_own_inputs(data_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "blob-model"
    model.write_bytes(b"model bytes")
    secrets = [str(data_dir / "api_key"), str(data_dir / "gradhealth.db"), "/etc/passwd", "/etc/shadow"]
    secrets += [str(Path.home() / ".bashrc"), os.path.realpath(sys.executable) + "/../../../../etc/hostname"]
    seen = run("read_files", files={"model.pt2": model}, paths=secrets)
    for path in secrets:
        assert not seen[path]["ok"], f"the sandbox could read {path}: {seen[path]}"
    inside = "/input/model.pt2"
    assert seen[inside] == {"ok": True, "value": repr(b"model bytes")}


def test_child_cannot_write_outside_its_private_tmp(tmp_path: Path) -> None:
    model = tmp_path / "blob-model"
    model.write_bytes(b"original")
    code_dir = Path(run_in_child.__code__.co_filename).parent
    targets = [str(tmp_path / "dropped"), str(code_dir / "dropped.py"), str(Path.home() / "dropped")]
    seen = run("write_files", files={"model.pt2": model}, paths=targets)
    for path in [*targets, "/input/model.pt2"]:
        assert not seen[path]["ok"], f"the sandbox could write {path}: {seen[path]}"
    assert model.read_bytes() == b"original"
    assert not any(Path(path).exists() for path in targets)


def _machine_address() -> str:
    """An address of this machine other than loopback, when it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent for a UDP connect
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def test_child_has_no_network() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        hosts = sorted({"127.0.0.1", _machine_address()})
        assert socket.create_connection(("127.0.0.1", port), timeout=5)  # the listener answers outside
        seen = run("connect", port=port, hosts=hosts)
    for host in hosts:
        assert not seen[host]["ok"], f"the sandbox reached {host}:{port}: {seen[host]}"


def test_child_environment_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADHEALTH_DATABASE_URL", f"postgresql://gradhealth:{SECRET}@db/gradhealth")
    monkeypatch.setenv("GRADHEALTH_BROKER_URL", f"redis://:{SECRET}@redis:6379/0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("PYTHONPATH", "/tmp/evil")
    seen = run("environment")
    assert SECRET not in repr(seen["env"])
    assert not any(name.startswith(("GRADHEALTH_", "AWS_", "PYTHON")) for name in seen["env"])
    assert seen["uid"] == SANDBOX_UID and seen["cwd"] == "/tmp" and "/tmp/evil" not in seen["path"]
    assert str(os.getpid()) not in seen["pids"] and len(seen["pids"]) <= 3  # its own PID namespace


def test_stray_modules_in_the_worker_folder_are_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("queue", "json", "gh_stray"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('imported from the worker folder')\n")
    monkeypatch.chdir(tmp_path)
    for isolation in (SANDBOXED, UNSANDBOXED):  # python -I and a private cwd hold without namespaces too
        seen = run("import_module", isolation=isolation, names=["queue", "gh_stray"])
        assert seen["queue"]["ok"] and str(tmp_path) not in seen["queue"]["value"]
        assert not seen["gh_stray"]["ok"] and "ModuleNotFoundError" in seen["gh_stray"]["error"]


def test_unsandboxed_child_still_gets_a_scrubbed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADHEALTH_DATABASE_URL", f"postgresql://gradhealth:{SECRET}@db/gradhealth")
    seen = run("environment", isolation=UNSANDBOXED)
    assert SECRET not in repr(seen["env"]) and not any(n.startswith("GRADHEALTH_") for n in seen["env"])


def test_child_runs_under_resource_limits() -> None:
    seen = run("read_files", paths=[], files={})
    limits = run("limits")
    assert limits["Max processes"] == [MAX_PROCESSES, MAX_PROCESSES]
    assert limits["Max file size"] == [MAX_FILE_BYTES, MAX_FILE_BYTES] and limits["Max core file size"] == [0, 0]
    assert seen == {}


@pytest.mark.skipif(os.geteuid() == 0, reason="the kernel exempts processes of host uid 0 from RLIMIT_NPROC")
def test_threads_and_processes_are_capped() -> None:
    seen = run("many_threads", count=4 * MAX_PROCESSES)
    assert seen["error"] is not None and seen["started"] < MAX_PROCESSES


class _ReadsFile(torch.nn.Module):
    """What the issue's attacker uploaded: torch.from_file on the data folder's key."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_file(self.path, False, 12, dtype=torch.uint8).float() + x


class _WritesFile(torch.nn.Module):
    """aten::save from TorchScript: writes a file of the attacker's choice."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.ops.aten.save(x, self.path)
        return x


def test_torchscript_io_ops_fail_inside_the_sandbox(data_dir: Path, tmp_path: Path) -> None:
    """Defence in depth: the service refuses TorchScript, but even unchecked I/O ops find nothing."""
    reader, writer = tmp_path / "reader.pt", tmp_path / "writer.pt"
    torch.jit.save(torch.jit.script(_ReadsFile(str(data_dir / "api_key"))), str(reader))
    dropped = tmp_path / "dropped.pt"
    torch.jit.save(torch.jit.script(_WritesFile(str(dropped))), str(writer))
    assert torch.jit.load(str(reader))(torch.zeros(1)).shape == (12,)  # it does leak outside a sandbox
    read = run("run_torchscript", files={"model.pt": reader})
    assert not read["ok"] and "from_file" in read["error"]
    run("run_torchscript", files={"model.pt": writer})  # aten::save fails silently: look at the disk
    assert not dropped.exists()


def test_missing_bubblewrap_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        check_sandbox(unsafe_no_sandbox=False)
    check_sandbox(unsafe_no_sandbox=True)  # the explicit opt-out skips the check
    with pytest.raises(ChildFailure) as info:
        run("ok", value=1)
    assert info.value.code == "sandbox_unavailable" and "GRADHEALTH_UNSAFE_NO_SANDBOX" in info.value.message


def test_worker_refuses_to_start_without_a_sandbox(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADHEALTH_")}
    env.update(PATH="/nonexistent", GRADHEALTH_DATA_DIR=str(tmp_path))
    for command in (["worker"], ["serve", "--port", "1"]):
        done = subprocess.run(
            [sys.executable, "-m", "gradhealth.cli", *command], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stderr
        assert "refusing to start" in done.stderr and "bubblewrap" in done.stderr


def test_crafted_pt2_payloads_run_unchecked_leave_no_trace_on_the_host(tmp_path: Path) -> None:
    """Every archive attack of tests/test_archive_check.py, loaded with no checker, inside the sandbox.

    Each payload writes a marker file under /tmp. Inside the sandbox the payloads do run (their
    markers appear in the child's private /tmp), and the host's /tmp never sees one.
    """
    from tests.test_archive_check import export_archive, rewrite, vectors

    base = export_archive("mlp", tmp_path / "base.pt2")
    token = os.urandom(6).hex()
    files, stages, markers = {}, {}, {}
    for vector, (_, stage) in vectors(Path("/unused")).items():
        if stage == "none":
            continue
        marker = Path(f"/tmp/gradhealth-sandbox-marker-{token}-{vector}")
        spec, _ = vectors(marker, base)[vector]
        name = f"{vector}.pt2"
        files[name] = rewrite(base, tmp_path / name, **spec)
        stages[name], markers[vector] = stage, str(marker)
    inside = run("run_pt2_unchecked", files=files, stages=stages, markers=list(markers.values()))
    assert all(inside.values()), {v: inside[m] for v, m in markers.items()}  # the payloads really ran
    assert not [v for v, m in markers.items() if os.path.exists(m)], "a payload reached the host's /tmp"
