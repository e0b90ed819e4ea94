"""Service overhead: submission-to-report time beyond the engine's own, and report-read latency.

Starts real servers on localhost: the embedded mode (`gradhealth serve`: SQLite, filesystem
broker) and the distributed mode (`gradhealth api` + one `gradhealth worker`, Redis + a
throwaway PostgreSQL database), then

1. submits the same small analysis N times, one after another, and measures POST -> report
   readable (polling every 10 ms). The engine's own time is the report's `timings` (measure,
   rules) and, wider, the worker's `run_seconds` (archive load + engine, measured in the child).
   Overhead = end-to-end minus those: queueing, the sandbox interpreter start, DB writes, polling.
2. reads one report from 100 concurrent clients (httpx.AsyncClient each, closed loop) and
   reports p50/p99 latency and throughput; then at a fixed offered rate (open loop), which is
   what a p99 budget means for clients that are not saturating the server.

Budget (DESIGN.md §6): report reads p99 < 50 ms at 100 concurrent clients on localhost.

    python benchmarks/service.py [--runs 5] [--reads 3000] [--modes embedded,redis] [--gap 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
from torch import nn

import gradhealth

REDIS_URL = os.environ.get("GRADHEALTH_BENCH_REDIS", "redis://127.0.0.1:6379/0")
PG_ADMIN = os.environ.get("GRADHEALTH_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "gradhealth.cli", *args], env=env, stdout=handle, stderr=subprocess.STDOUT
        )


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a server process exited during start-up; see its log")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADHEALTH_")}
    env.update(extra, GRADHEALTH_LOG_LEVEL="WARNING")
    return env


@contextmanager
def embedded(root: Path) -> Iterator[tuple[str, str]]:
    """`gradhealth serve` with its own data dir; yields (base URL, key)."""
    port, data = _port(), root / "embedded"
    procs = [_start(["serve", "--port", str(port), "--data-dir", str(data)], _env(), root / "serve.log")]
    try:
        _wait_ready(f"http://127.0.0.1:{port}", procs)
        yield f"http://127.0.0.1:{port}", (data / "api_key").read_text().strip()
    finally:
        _stop(procs)


@contextmanager
def distributed(root: Path) -> Iterator[tuple[str, str]]:
    """`gradhealth api` + one `gradhealth worker` on Redis and a fresh PostgreSQL database."""
    import psycopg

    name = "gradhealth_bench_" + secrets.token_hex(4)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env = _env(
        GRADHEALTH_DATA_DIR=str(root / "dist"),
        GRADHEALTH_DATABASE_URL=PG_ADMIN.rsplit("/", 1)[0] + "/" + name,
        GRADHEALTH_BROKER_URL=REDIS_URL,
        GRADHEALTH_BROKER_KEY_PREFIX=name + ":",
    )
    key = subprocess.run(
        [sys.executable, "-m", "gradhealth.cli", "admin", "create-project", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = _port()
    procs = [
        _start(["api", "--host", "127.0.0.1", "--port", str(port)], env, root / "api.log"),
        _start(["worker", "--name", "bench@local"], env, root / "worker.log"),
    ]
    try:
        _wait_ready(f"http://127.0.0.1:{port}", procs)
        time.sleep(3)  # let the worker finish starting
        yield f"http://127.0.0.1:{port}", key
    finally:
        _stop(procs)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for stale in client.scan_iter(match=name + ":*"):
            client.delete(stale)


def make_files(root: Path) -> tuple[Path, Path]:
    """A 6-layer sigmoid MLP (the README's kind of model) and a batch of 64."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(64, 64), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    return (
        gradhealth.package(model, "cross_entropy", x, y, root / "model.pt2"),
        gradhealth.save_batch(root / "batch.safetensors", x, y),
    )


def submission_overhead(
    base: str, key: str, model: Path, batch: Path, runs: int, gap: float
) -> tuple[dict[str, float], str]:
    """Median seconds per component over `runs` sequential analyses; returns one analysis id."""
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    model_id = http.post("/v1/models", files={"file": model.open("rb")}).json()["id"]
    batch_id = http.post("/v1/batches", files={"file": batch.open("rb")}).json()["id"]
    rows: dict[str, list[float]] = {"end_to_end": [], "run_seconds": [], "engine_timings": []}
    analysis_id = ""
    for _ in range(runs + 1):  # the first run warms the worker up and is not counted
        time.sleep(gap)
        start = time.perf_counter()
        analysis_id = http.post("/v1/analyses", json={"model_id": model_id, "batch_id": batch_id}).json()["id"]
        while (report := http.get(f"/v1/analyses/{analysis_id}/report")).status_code == 409:
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        assert report.status_code == 200, report.text
        status = http.get(f"/v1/analyses/{analysis_id}").json()
        rows["end_to_end"].append(elapsed)
        rows["engine_timings"].append(sum(report.json()["timings"].values()))
        rows["run_seconds"].append(float(status["run_seconds"]))
    http.close()
    medians = {name: statistics.median(values[1:]) for name, values in rows.items()}
    return medians, analysis_id


async def _reader(base: str, key: str, path: str, count: int, out: list[float], rate: float | None) -> None:
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        await client.get(path)  # connect first: latency is measured on established connections
        next_at = time.perf_counter()
        for _ in range(count):
            if rate:  # Poisson arrivals: independent clients do not fire in lock-step
                next_at += random.expovariate(rate)
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            start = time.perf_counter()
            response = await client.get(path)
            out.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text


def read_latency(
    base: str, key: str, analysis_id: str, total: int, clients: int, rate_each: float | None
) -> dict[str, float]:
    """p50/p99 (ms) and throughput for `clients` concurrent readers of one report."""
    latencies: list[float] = []
    path = f"/v1/analyses/{analysis_id}/report"

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(
            *(_reader(base, key, path, total // clients, latencies, rate_each) for _ in range(clients))
        )
        return time.perf_counter() - start

    wall = asyncio.run(main())
    ordered = sorted(latencies)
    return {
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[int(len(ordered) * 0.99) - 1],
        "req_per_s": len(ordered) / wall,
    }


def server_side(base: str, route: str = "/v1/analyses/{analysis_id}/report") -> str:
    """Server-side latency of report reads from the API's own Prometheus histogram (bucket bounds)."""
    text = httpx.get(base + "/metrics", timeout=10).text
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("gradhealth_http_request_duration_seconds_bucket") and f'route="{route}"' in line:
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    if not buckets:
        return "n/a"
    total = buckets[-1][1]

    def quantile(q: float) -> str:
        bound = next(b for b, count in buckets if count >= q * total)
        return f"<= {bound * 1000:g} ms"

    return f"server-side p50 {quantile(0.5)}, p99 {quantile(0.99)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="sequential analyses per mode (default 5)")
    parser.add_argument("--reads", type=int, default=3000, help="report reads per latency run (default 3000)")
    parser.add_argument("--clients", type=int, default=100, help="concurrent readers (default 100)")
    parser.add_argument("--rate", type=float, default=2.0, help="open-loop reads/s per client (default 2)")
    parser.add_argument("--modes", default="embedded,redis", help="embedded,redis")
    parser.add_argument("--gap", type=float, default=0.0, help="idle seconds between submissions (default 0)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, batch = make_files(root)
        for mode in args.modes.split(","):
            runner = embedded if mode == "embedded" else distributed
            with runner(root) as (base, key):
                t, analysis_id = submission_overhead(base, key, model, batch, args.runs, args.gap)
                print(
                    f"[{mode}] submission -> report (median of {args.runs}, gap {args.gap:g} s): {t['end_to_end'] * 1000:.0f} ms; "
                    f"engine timings {t['engine_timings'] * 1000:.0f} ms; worker load+engine "
                    f"{t['run_seconds'] * 1000:.0f} ms; overhead beyond engine timings "
                    f"{(t['end_to_end'] - t['engine_timings']) * 1000:.0f} ms, beyond load+engine "
                    f"{(t['end_to_end'] - t['run_seconds']) * 1000:.0f} ms"
                )
                read_latency(base, key, analysis_id, 500, 50, None)  # warm-up
                closed = read_latency(base, key, analysis_id, args.reads, args.clients, None)
                print(
                    f"[{mode}] report reads, {args.clients} clients closed loop: p50 {closed['p50_ms']:.1f} ms, "
                    f"p99 {closed['p99_ms']:.1f} ms, {closed['req_per_s']:.0f} req/s"
                )
                print(f"[{mode}] ({server_side(base)}, cumulative)")
                reads = max(args.clients, int(args.clients * args.rate * 10))
                opened = read_latency(base, key, analysis_id, reads, args.clients, args.rate)
                print(
                    f"[{mode}] report reads, {args.clients} clients x {args.rate:g}/s open loop: "
                    f"p50 {opened['p50_ms']:.1f} ms, p99 {opened['p99_ms']:.1f} ms, {opened['req_per_s']:.0f} req/s"
                )


if __name__ == "__main__":
    main()
