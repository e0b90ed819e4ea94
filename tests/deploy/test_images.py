"""Images, entrypoint roles and compose.yaml: what each container runs and how it is probed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_images_run_non_root_read_only_with_sandbox_tools(name: str) -> None:
    steps = _instructions(DEPLOY / name)
    args = {kind: [a for k, a in steps if k == kind] for kind, _ in steps}
    assert args["USER"] == ["10001:10001"]
    assert steps.index(("USER", "10001:10001")) > max(i for i, (k, _) in enumerate(steps) if k in ("RUN", "COPY"))
    assert any("bubblewrap" in run and "tini" in run for run in args["RUN"])
    assert any('"/data", "/tmp"' in v for v in args["VOLUME"])  # the only writable paths
    assert any("compileall" in run for run in args["RUN"])  # no .pyc writes on a read-only root
    assert args["HEALTHCHECK"] and "gradhealth-healthcheck" in args["HEALTHCHECK"][0]
    assert "8000" not in args["HEALTHCHECK"][0]  # per role, not the API port for every container
    torch = next(run for run in args["RUN"] if "torch==" in run)
    if name == "Dockerfile":
        assert "--index-url" in torch and any("whl/cpu" in a for a in args["ARG"])
    else:  # PyPI's torch 2.13.0 for Linux x86_64 is the CUDA 13.0 build: no other index
        assert "--index-url" not in torch and "TORCH_INDEX" not in " ".join(args.get("ARG", []))


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "**/__pycache__", ".pytest_cache", "tests"} <= ignored
    copied = {a.split()[0] for k, a in _instructions(DEPLOY / "Dockerfile") if k == "COPY" and "--chmod" not in a}
    assert not copied & ignored  # nothing the image copies is excluded


@pytest.fixture
def fake_gradhealth(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A `gradhealth` on PATH that records its arguments and CUDA_VISIBLE_DEVICES, then waits to be stopped."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    log.mkdir()
    script = bin_dir / "gradhealth"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "CUDA=${{CUDA_VISIBLE_DEVICES:-unset}} $*" > "{log}/$$"\n'
        'case "$*" in *--healthcheck*) exit "${FAKE_HEALTH_RC:-0}";; esac\n'
        "trap 'exit 0' TERM\nwhile :; do sleep 0.1; done\n"
    )
    script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    env["GRADHEALTH_RUN_DIR"] = str(tmp_path)  # where gpu-workers leaves its count for the health check
    return log, env


def _calls(log: Path) -> list[str]:
    return sorted(p.read_text().strip() for p in log.iterdir())


def _wait_calls(log: Path, n: int, proc: subprocess.Popen[bytes]) -> list[str]:
    deadline = time.monotonic() + 20
    while len(list(log.iterdir())) < n:
        assert proc.poll() is None, "the entrypoint exited early"
        assert time.monotonic() < deadline, f"only {_calls(log)}"
        time.sleep(0.05)
    return _calls(log)


def test_gpu_workers_start_one_process_per_gpu(fake_gradhealth: tuple[Path, dict[str, str]]) -> None:
    log, env = fake_gradhealth
    entry = DEPLOY / "entrypoint.sh"
    proc = subprocess.Popen(["sh", str(entry), "gpu-workers"], env={**env, "GRADHEALTH_GPUS": "3"})
    try:
        calls = _wait_calls(log, 3, proc)
        assert (Path(env["GRADHEALTH_RUN_DIR"]) / "gradhealth-gpu-workers").read_text().strip() == "3"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    assert calls == [f"CUDA={i} worker --queues gpu --name gpu{i}@{host}" for i in range(3)]


def test_gpu_workers_stop_together_when_one_exits(fake_gradhealth: tuple[Path, dict[str, str]]) -> None:
    log, env = fake_gradhealth
    proc = subprocess.Popen(["sh", str(DEPLOY / "entrypoint.sh"), "gpu-workers"], env={**env, "GRADHEALTH_GPUS": "2"})
    try:
        _wait_calls(log, 2, proc)
        victim = int(sorted(log.iterdir())[0].name)
        os.kill(victim, signal.SIGKILL)  # one worker dies: the container must exit so it is restarted whole
        assert proc.wait(timeout=30) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    survivors = [int(p.name) for p in log.iterdir() if int(p.name) != victim]
    assert survivors and all(not Path(f"/proc/{pid}").exists() for pid in survivors)


def test_gpu_workers_refuse_without_a_gpu(fake_gradhealth: tuple[Path, dict[str, str]]) -> None:
    _, env = fake_gradhealth
    done = subprocess.run(
        ["sh", str(DEPLOY / "entrypoint.sh"), "gpu-workers"],
        env={**env, "GRADHEALTH_GPUS": "0"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "no GPU visible" in done.stderr


@pytest.mark.parametrize("role", ["worker", "gpu-workers"])
def test_worker_health_pings_its_own_names(role: str, fake_gradhealth: tuple[Path, dict[str, str]]) -> None:
    log, env = fake_gradhealth
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    check = ["sh", str(DEPLOY / "healthcheck.sh")]
    if role == "gpu-workers":
        not_started = subprocess.run(check, env={**env, "GRADHEALTH_ROLE": role}, timeout=30)
        assert not_started.returncode == 1 and not list(log.iterdir())  # no count yet: unhealthy, nothing pinged
        (Path(env["GRADHEALTH_RUN_DIR"]) / "gradhealth-gpu-workers").write_text("2\n")
    ok = subprocess.run(check, env={**env, "GRADHEALTH_ROLE": role, "GRADHEALTH_WORKER_NAME": "cpu"}, timeout=30)
    failing = subprocess.run(check, env={**env, "GRADHEALTH_ROLE": role, "FAKE_HEALTH_RC": "1"}, timeout=30)
    names = [f"cpu@{host}"] if role == "worker" else [f"gpu0@{host}", f"gpu1@{host}"]
    assert ok.returncode == 0 and failing.returncode == 1
    recorded = {call.split("--name ")[1] for call in _calls(log)}
    assert set(names) <= recorded and all("--healthcheck" in call for call in _calls(log))


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_services_and_health_per_role() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"api", "worker", "worker-gpu", "postgres", "redis", "minio", "minio-init", "migrate", "bootstrap"} <= set(
        services
    )
    ours = {name: s for name, s in services.items() if str(s.get("image", "")).startswith("gradhealth:")}
    assert set(ours) == {"api", "worker", "worker-gpu", "migrate", "bootstrap"}
    for name, service in ours.items():
        assert service["user"] == "10001:10001" and service["read_only"] is True, name
        assert any(t.startswith("/tmp") for t in service["tmpfs"]) and service["cap_drop"] == ["ALL"]
        env = service["environment"]
        assert env["GRADHEALTH_BLOB_URL"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    for name in ("api", "worker", "worker-gpu"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "/usr/local/bin/gradhealth-healthcheck"]
        assert services[name]["environment"]["GRADHEALTH_ROLE"] == services[name]["command"][0]
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["bootstrap"]["command"] == ["bootstrap"]
    assert "seccomp=unconfined" not in services["api"].get("security_opt", [])  # only workers run the sandbox


def test_docker_compose_config_accepts_it() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("`docker compose` is not installed here; test_compose_services_and_health_per_role checks the file")
    for profile in ([], ["--profile", "gpu"]):
        done = subprocess.run(
            [docker, "compose", "-f", str(DEPLOY / "compose.yaml"), *profile, "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
