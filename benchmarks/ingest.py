"""Log ingestion throughput of one API process, and how fast one layer's history reads back.

Starts real servers on localhost (see benchmarks/service.py): the embedded mode (`gradhealth
serve`, SQLite) and `gradhealth api` on PostgreSQL + Redis. Each of `--clients` threads starts
its own run and POSTs pre-encoded batches (the SDK's wire format: msgpack with float32 blobs, or
JSON number lists) back to back; throughput = layer-step values stored / wall time. Every batch
is decoded, validated, stored as L + 1 segments and evaluated by the run rules before the POST
returns, so this is the whole ingestion path. The client encodes nothing while timing.

Then it reads one layer's full history (GET /v1/runs/{id}/layers/{name}/history) and the run
report, to show reads stay fast as a run grows.

Budget (DESIGN.md §6): >= 10^6 layer-step values per second per API process.

    python benchmarks/ingest.py [--layers 200] [--steps 256] [--batches 40] [--clients 2] [--modes embedded,postgres]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import msgpack
import numpy as np
from gradhealth.diagnostics.run_rules.metrics import METRICS

sys.path.insert(0, str(Path(__file__).parent))
from service import distributed, embedded  # noqa: E402

BUDGET = 1e6


def encode_batches(layers: int, steps: int, batches: int, fmt: str, seed: int) -> list[bytes]:
    """Bodies as watch() sends them: steps x layers per metric, loss and lr per step."""
    rng = np.random.default_rng(seed)
    bodies = []
    for seq in range(batches):
        first = seq * steps
        metrics = {name: rng.lognormal(-1, 0.3, (steps, layers)).astype("<f4") for name in METRICS}
        metrics["nonfinite"][:] = 0
        body = {
            "seq": seq,
            "steps": list(range(first, first + steps)),
            "loss": (2.0 / (1 + 0.001 * np.arange(first, first + steps))).tolist(),
            "lr": [1e-3] * steps,
            "metrics": {k: (v.tobytes() if fmt == "msgpack" else v.tolist()) for k, v in metrics.items()},
        }
        bodies.append(msgpack.packb(body) if fmt == "msgpack" else json.dumps(body).encode())
    return bodies


def _send(base: str, key: str, run_id: str, bodies: list[bytes], fmt: str, errors: list[str]) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": f"application/{fmt}"}
    with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
        for body in bodies:
            response = http.post(f"/v1/runs/{run_id}/logs", content=body)
            if response.status_code != 200:
                errors.append(response.text)
                return


def throughput(base: str, key: str, layers: int, steps: int, batches: int, clients: int, fmt: str) -> tuple[float, str]:
    """Values per second with `clients` concurrent runs; returns the rate and one run id."""
    layer_list = [{"name": f"blocks.{i}.fc", "type": "Linear", "num_parameters": 4096} for i in range(layers)]
    run_ids = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        for i in range(clients):
            created = http.post("/v1/runs", json={"name": f"bench-{fmt}-{i}", "layers": layer_list})
            created.raise_for_status()
            run_ids.append(created.json()["id"])
    payloads = [encode_batches(layers, steps, batches, fmt, seed=i) for i in range(clients)]
    errors: list[str] = []
    threads = [
        threading.Thread(target=_send, args=(base, key, run_id, bodies, fmt, errors))
        for run_id, bodies in zip(run_ids, payloads, strict=True)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"ingestion failed: {errors[0][:300]}")
    return clients * batches * steps * layers * len(METRICS) / elapsed, run_ids[0]


def read_times(base: str, key: str, run_id: str, layer: str, repeats: int = 5) -> tuple[float, float, int]:
    """Median seconds to read one layer's history and the JSON report; and the history length."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        history, report, length = [], [], 0
        for _ in range(repeats):
            started = time.perf_counter()
            response = http.get(f"/v1/runs/{run_id}/layers/{layer}/history")
            response.raise_for_status()
            history.append(time.perf_counter() - started)
            length = len(response.json()["steps"])
            started = time.perf_counter()
            http.get(f"/v1/runs/{run_id}/report").raise_for_status()
            report.append(time.perf_counter() - started)
    return statistics.median(history), statistics.median(report), length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--steps", type=int, default=256, help="steps per batch (watch() ships up to 256)")
    parser.add_argument("--batches", type=int, default=40, help="batches per client")
    parser.add_argument("--clients", type=int, default=2, help="concurrent runs")
    parser.add_argument("--modes", default="embedded,postgres")
    args = parser.parse_args()
    per_run = args.layers * args.steps * args.batches * len(METRICS)
    print(
        f"{args.clients} runs x {args.batches} batches x {args.steps} steps x {args.layers} layers x {len(METRICS)} metrics"
    )
    print(f"= {per_run:.2e} layer-step values per run\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            server = embedded if mode == "embedded" else distributed
            (Path(tmp) / mode).mkdir()
            with server(Path(tmp) / mode) as (base, key):
                for fmt in ("msgpack", "json"):
                    batches = args.batches if fmt == "msgpack" else max(2, args.batches // 4)
                    rate, run_id = throughput(base, key, args.layers, args.steps, batches, args.clients, fmt)
                    history_s, report_s, length = read_times(base, key, run_id, f"blocks.{args.layers // 2}.fc")
                    rows.append((mode, fmt, rate, history_s, report_s, length))
    print(f"{'mode':<10} {'format':<8} {'values/s':>12} {'vs budget':>10} {'layer history':>22} {'report':>9}")
    for mode, fmt, rate, history_s, report_s, length in rows:
        print(
            f"{mode:<10} {fmt:<8} {rate:>12.3e} {rate / BUDGET:>9.2f}x "
            f"{history_s * 1000:>8.1f} ms ({length} steps) {report_s * 1000:>6.0f} ms"
        )
    print(f"\nbudget: >= {BUDGET:.0e} values/s per API process (DESIGN.md §6)")


if __name__ == "__main__":
    main()
