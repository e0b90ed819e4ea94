"""What the sandbox child may see: the command line that confines it, and its scrubbed environment.

An uploaded model is hostile. The child that runs it is started under bubblewrap (`bwrap`, Debian's
package `bubblewrap`) in new user, PID, IPC, UTS, cgroup and network namespaces: it runs as uid
65534 with no capabilities, has no network but its own loopback, and sees a file system made of
read-only binds of the Python runtime, our engine's code and its own input folder, plus an empty
private /tmp. Nothing else of the worker's machine exists in its view: not the data folder, not
/etc, not the home directory. Without bwrap the service refuses to run models (fail closed) unless
the operator sets GRADHEALTH_UNSAFE_NO_SANDBOX=1, which keeps everything here but the namespaces.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

INPUT_DIR = "/input"  # where the child finds the files of its one run, read-only
TMP_BYTES = 256 * 2**20  # the child's private /tmp (a tmpfs: RAM, so it is capped)
SANDBOX_UID = 65534  # "nobody" inside the user namespace
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
LOADER_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")  # shared libraries resolve
CHILD_PACKAGES = ("gradhealth", "gradhealth.sdk", "gradhealth.diagnostics", "gradhealth.workers", "gradhealth.report")
PASSTHROUGH_ENV = (  # performance and device knobs only: no URLs, keys or paths of the worker
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "NVIDIA_VISIBLE_DEVICES",
    "LD_LIBRARY_PATH",
)
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) and allow user namespaces "
    "(sysctl kernel.unprivileged_userns_clone=1 where the kernel has it; in a container, a seccomp "
    "profile that permits unshare/clone with CLONE_NEWUSER). Only on a machine where every uploaded "
    "model is trusted, set GRADHEALTH_UNSAFE_NO_SANDBOX=1 (or --unsafe-no-sandbox) to run models "
    "without namespaces"
)


class SandboxUnavailable(RuntimeError):
    """Models must not run: the confinement cannot be set up here and the operator did not opt out."""


@dataclass(frozen=True)
class Isolation:
    """How one child is confined; children are only reused (the warm spare) for an equal Isolation."""

    sandboxed: bool = True
    import_roots: tuple[Path, ...] = field(default_factory=tuple)  # extra code folders (tests' targets)


def child_env(home: str) -> dict[str, str]:
    """The child's whole environment: no database or broker URL, no key, nothing of the worker's."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
    env.update({name: os.environ[name] for name in PASSTHROUGH_ENV if name in os.environ})
    return env


def _covered(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def code_dirs(extra: Sequence[Path] = ()) -> list[Path]:
    """Folders the child needs to import Python, torch and our engine (minimal, de-duplicated)."""
    wanted = [Path(sys.base_prefix), Path(sys.prefix), Path(os.path.realpath(sys.executable)).parent]
    for name in CHILD_PACKAGES:
        spec = importlib.util.find_spec(name) if _parent_importable(name) else None
        if spec is not None and spec.submodule_search_locations:
            wanted.extend(Path(p) for p in spec.submodule_search_locations)
    wanted.extend(extra)
    roots: list[Path] = []
    for path in sorted({Path(os.path.realpath(p)) for p in wanted if os.path.exists(p)}, key=lambda p: len(p.parts)):
        if not _covered(path, roots) and not _covered(path, map(Path, SYSTEM_DIRS)):
            roots.append(path)
    return roots


def _parent_importable(name: str) -> bool:
    """find_spec("a.b") imports "a"; only ask for packages whose parent is there."""
    parent = name.rpartition(".")[0]
    return not parent or importlib.util.find_spec(parent) is not None


def _system_binds() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in LOADER_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    return args


def _gpu_binds() -> list[str]:
    """NVIDIA device nodes, when the worker has them (CUDA runs only in the child)."""
    devices = sorted(p for p in Path("/dev").glob("nvidia*") if not p.is_dir())
    args = [arg for dev in devices for arg in ("--dev-bind", str(dev), str(dev))]
    if devices and os.path.isdir("/sys"):
        args += ["--ro-bind", "/sys", "/sys"]  # the driver reads PCI topology from sysfs
    return args


def bwrap_command(command: Sequence[str], input_dir: Path, isolation: Isolation) -> list[str]:
    """`bwrap … -- command`: the child in its own namespaces, seeing only code and its inputs."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            f"the model sandbox needs bubblewrap (`bwrap`), which is not installed: {INSTALL_HINT}"
        )
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"]
    args += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL", "--hostname", "sandbox"]
    args += ["--clearenv", "--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    args += _system_binds()
    for path in code_dirs(isolation.import_roots):
        args += ["--ro-bind", str(path), str(path)]
    args += ["--ro-bind", str(input_dir), INPUT_DIR]
    args += _gpu_binds()
    for name, value in child_env("/tmp").items():
        args += ["--setenv", name, value]
    args += ["--remount-ro", "/"]  # bwrap builds / as a tmpfs: freeze it (only /tmp stays writable)
    return [*args, "--chdir", "/tmp", "--", *command]


def check_sandbox(unsafe_no_sandbox: bool) -> None:
    """Start-up check: a trivial confined Python must run, else SandboxUnavailable (fail closed)."""
    if unsafe_no_sandbox:
        return
    try:
        with tempfile.TemporaryDirectory(prefix="gradhealth-probe-") as empty:
            command = bwrap_command([sys.executable, "-I", "-c", "pass"], Path(empty), Isolation())
            done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=child_env("/tmp"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxUnavailable(f"the model sandbox could not start ({exc}); {INSTALL_HINT}") from None
    if done.returncode != 0:
        detail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise SandboxUnavailable(f"the model sandbox could not start (bwrap: {detail[0][:300]}); {INSTALL_HINT}")
