"""Scale-out: throughput and latency of the distributed stack with S3 blobs as CPU workers are added.

Starts a real S3-compatible server (`moto_server`), a throwaway PostgreSQL database, Redis, one
`gradhealth api` and then, for each N in --workers (1, 2, 4), N `gradhealth worker` processes
that share no disk with the API or each other (own data dir and TMPDIR, blobs only through S3).
Each round first runs N analyses to warm every worker (not counted), then submits M analyses of
mixed sizes at once (a small MLP, a deeper/wider MLP and a small CNN, in turn) and polls until
all finish. Per round it prints throughput (analyses per minute from the first submission to
the last finish), p50/p99 latency (submission to finished, as the API reports it), the mean
engine time (the report's `timings`) and the mean time a worker holds an analysis outside the
engine (started_at to finished_at minus the engine: S3 download, sandbox hand-off, archive load,
database writes), which is what a GPU does not speed up.

GPU cluster estimate (paper, no GPU measured here): a GPU worker runs one analysis at a time,
so analyses per GPU-hour = 3600 / (fixed + engine_gpu), where `fixed` is the per-analysis cost
outside the engine measured here (sandbox child start, archive load, S3 download, DB writes) and
engine_gpu = engine_cpu / S for an assumed speed-up S (printed for S = 10 and S = 50: small
models are launch-bound, so S is low). A cluster of G GPUs gives G times that while the API,
PostgreSQL and Redis keep up, which the N-worker rounds here check on a small scale.

    python benchmarks/scale.py [--workers 1,2,4] [--analyses 12]

The machine's load (`uptime`) is printed next to the numbers: on a shared 2-core machine N = 4
oversubscribes the cores, which is the point of the curve's flat end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import torch
from torch import nn

import gradhealth

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service import PG_ADMIN, REDIS_URL, _env, _port, _start, _stop, _wait_ready  # noqa: E402


def make_models(root: Path) -> list[tuple[str, Path, Path]]:
    """Three sizes: (name, model package, batch)."""
    torch.manual_seed(0)
    out = []
    specs = [("mlp-small", 64, 4, 32), ("mlp-wide", 512, 8, 128)]
    for name, width, depth, batch in specs:
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, width), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(width, 10))
        x, y = torch.randn(batch, width), torch.randint(0, 10, (batch,))
        package = gradhealth.package(model, "cross_entropy", x, y, root / f"{name}.pt2")
        out.append((name, package, gradhealth.save_batch(root / f"{name}.safetensors", x, y)))
    cnn = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 10),
    )  # fmt: skip
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    package = gradhealth.package(cnn, "cross_entropy", x, y, root / "cnn.pt2")
    out.append(("cnn", package, gradhealth.save_batch(root / "cnn.safetensors", x, y)))
    return out


@contextmanager
def s3_server(root: Path) -> Iterator[dict[str, str]]:
    """moto_server on a free port with one bucket; yields the AWS_* variables to reach it."""
    import boto3

    port = _port()
    script = Path(sys.executable).with_name("moto_server")
    with open(root / "moto.log", "ab") as log:
        proc = subprocess.Popen([str(script), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
    }
    try:
        for _ in range(300):
            try:
                httpx.get(endpoint + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        ).create_bucket(Bucket="gradhealth-bench")
        yield {**env, "GRADHEALTH_BLOB_URL": "s3://gradhealth-bench/blobs"}
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def database() -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database; yields (URL, a name usable as a Redis prefix)."""
    import psycopg

    name = "gradhealth_scale_" + secrets.token_hex(4)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name, name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for stale in client.scan_iter(match=name + ":*"):
            client.delete(stale)


def _wait_workers(logs: list[Path], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(" ready." in log.read_text(errors="replace") for log in logs if log.exists()) and all(
            log.exists() for log in logs
        ):
            return
        time.sleep(0.2)
    raise RuntimeError("workers not ready; see their logs")


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run_round(http: httpx.Client, uploaded: list[tuple[str, str, str]], count: int) -> list[dict[str, object]]:
    """Submit `count` analyses at once (sizes in turn) and wait for all; returns their final states."""
    ids = []
    for i in range(count):
        _, model_id, batch_id = uploaded[i % len(uploaded)]
        response = http.post("/v1/analyses", json={"model_id": model_id, "batch_id": batch_id})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    done: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + 1800
    while len(done) < len(ids) and time.monotonic() < deadline:
        for analysis_id in ids:
            if analysis_id not in done:
                body = http.get(f"/v1/analyses/{analysis_id}").json()
                if body["status"] in ("succeeded", "failed"):
                    done[analysis_id] = body
        time.sleep(0.1)
    failed = [b for b in done.values() if b["status"] != "succeeded"]
    if failed or len(done) < len(ids):
        raise RuntimeError(f"{len(failed)} failed, {len(ids) - len(done)} unfinished: {failed[:1]}")
    return [done[i] for i in ids]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with M analyses, p99 is the slowest unless M >= 100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--analyses", type=int, default=12)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="gradhealth-scale-"))
    models = make_models(root)
    print(f"uptime before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"cores: {os.cpu_count()}, torch {torch.__version__}, M = {args.analyses} analyses per round")
    with s3_server(root) as s3_env, database() as (db_url, name):
        env = _env(
            GRADHEALTH_DATA_DIR=str(root / "api"),
            GRADHEALTH_DATABASE_URL=db_url,
            GRADHEALTH_BROKER_URL=REDIS_URL,
            GRADHEALTH_BROKER_KEY_PREFIX=name + ":",
            **s3_env,
        )
        key = subprocess.run(
            [sys.executable, "-m", "gradhealth.cli", "admin", "create-project", "scale"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        port = _port()
        api = [_start(["api", "--host", "127.0.0.1", "--port", str(port)], env, root / "api.log")]
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=60)
        try:
            _wait_ready(f"http://127.0.0.1:{port}", api)
            uploaded = []
            for model_name, model, batch in models:
                model_id = http.post("/v1/models", files={"file": model.open("rb")}).json()["id"]
                batch_id = http.post("/v1/batches", files={"file": batch.open("rb")}).json()["id"]
                uploaded.append((model_name, model_id, batch_id))
            print(f"\n{'N':>2} {'per min':>8} {'p50 s':>7} {'p99 s':>7} {'engine s':>9} {'fixed s':>8}  load (1 min)")
            fixed_all: list[float] = []
            engine_all: list[float] = []
            for n in counts:
                workers, logs = [], []
                for i in range(n):
                    own = root / f"n{n}-w{i}"
                    (own / "tmp").mkdir(parents=True)
                    wenv = {**env, "GRADHEALTH_DATA_DIR": str(own / "data"), "TMPDIR": str(own / "tmp")}
                    wenv["GRADHEALTH_LOG_LEVEL"] = "INFO"  # Celery says " ready." at INFO
                    logs.append(root / f"n{n}-w{i}.log")
                    workers.append(_start(["worker", "--name", f"scale{n}-{i}@local"], wenv, logs[-1]))
                try:
                    _wait_workers(logs)
                    run_round(http, uploaded, n)  # warm-up: every worker's first analysis, not counted
                    start = time.time()
                    finals = run_round(http, uploaded, args.analyses)
                    end = max(_when(str(b["finished_at"])) for b in finals)
                    latencies = [_when(str(b["finished_at"])) - _when(str(b["created_at"])) for b in finals]
                    engine, fixed = [], []
                    for body in finals:
                        timings = http.get(f"/v1/analyses/{body['id']}/report").json()["timings"]
                        engine.append(sum(timings.values()))
                        held = _when(str(body["finished_at"])) - _when(str(body["started_at"]))
                        fixed.append(held - engine[-1])
                    fixed_all += fixed
                    engine_all += engine
                    load = os.getloadavg()[0]
                    print(
                        f"{n:>2} {args.analyses / (end - start) * 60:>8.1f} {percentile(latencies, 50):>7.2f} "
                        f"{percentile(latencies, 99):>7.2f} {statistics.mean(engine):>9.3f} "
                        f"{statistics.mean(fixed):>8.3f}  {load:.2f}"
                    )
                finally:
                    _stop(workers)
            fixed_s, engine_s = statistics.median(fixed_all), statistics.median(engine_all)
            print("\nGPU cluster estimate (paper): analyses per GPU-hour = 3600 / (fixed + engine_cpu / S)")
            for speedup in (10, 50):
                per_gpu = 3600 / (fixed_s + engine_s / speedup)
                print(
                    f"  S = {speedup:>2}: fixed {fixed_s:.2f} s + engine {engine_s:.3f}/{speedup} s -> "
                    f"{per_gpu:,.0f} per GPU-hour; 8 GPUs {8 * per_gpu:,.0f}/h, 64 GPUs {64 * per_gpu:,.0f}/h"
                )
        finally:
            http.close()
            _stop(api)
    print(f"uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
