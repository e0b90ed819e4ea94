"""Sizing a worker: peak memory and time of one sandboxed analysis child, by model size (docs/operations.md).

Each size runs in a fresh process of this script (`--one`), so the peak resident set size of its
children (getrusage(RUSAGE_CHILDREN).ru_maxrss: bubblewrap and the analysis interpreter under it)
belongs to that size alone. The child is the one a worker runs (gradhealth.workers.engine_child:analyze,
under bubblewrap, cold: no warm spare), on a `gradhealth.package` archive of an MLP stack
(Linear -> LayerNorm -> GELU, `depth` blocks of `width`) with a batch of 32. "idle" is a child that
imports torch and the engine and answers without loading a model: the fixed cost per concurrent analysis.

    .venv/bin/python benchmarks/sizing.py [--repeats 3] [--widths 256,1024,2048,4096] [--checks standard]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEPTH, BATCH, CLASSES = 8, 32, 10
ENGINE_TARGET = "gradhealth.workers.engine_child:analyze"


def idle(payload: dict[str, Any], progress: Any) -> dict[str, Any]:
    """A child that imported the engine (the sandbox preloads it) and did nothing else."""
    import gradhealth.diagnostics  # noqa: F401

    return {"ok": True}


def _model(width: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for _ in range(DEPTH):
        blocks += [nn.Linear(width, width), nn.LayerNorm(width), nn.GELU()]
    return nn.Sequential(*blocks, nn.Linear(width, CLASSES)), torch.randn(BATCH, width), torch.randint(0, 10, (BATCH,))


def one(width: int, checks: str) -> dict[str, Any]:
    """Package, then run one sandboxed analysis child; report its peak RSS and times."""
    from gradhealth.workers.engine_child import BATCH_FILE, MODEL_FILE
    from gradhealth.workers.sandbox import Isolation, Limits, run_in_child

    import gradhealth

    folder = Path(tempfile.mkdtemp(prefix="gradhealth-sizing-"))
    limits, isolation = Limits(time_s=1800, memory_mb=0), Isolation(sandboxed=True, import_roots=(HERE,))
    started = time.perf_counter()
    if width == 0:
        run_in_child("benchmarks.sizing:idle", {}, limits, lambda *_: True, warm=False, isolation=isolation)
        params, archive, run_seconds = 0, 0, 0.0
    else:
        model, x, y = _model(width)
        params = sum(p.numel() for p in model.parameters())
        path = gradhealth.package(model, "cross_entropy", x, y, folder / "model.pt2")
        batch = gradhealth.save_batch(folder / "batch.safetensors", x, y)
        archive = path.stat().st_size
        payload = {"options": {"checks": checks.split(",")}, "device": "cpu", "batches": [BATCH_FILE]}
        started = time.perf_counter()
        result = run_in_child(
            ENGINE_TARGET,
            payload,
            limits,
            lambda *_: True,
            files={MODEL_FILE: path, BATCH_FILE: batch},
            warm=False,
            isolation=isolation,
        )
        run_seconds = float(result["run_seconds"])
    wall = time.perf_counter() - started
    fwdbwd = _plain_step(*_model(width)) if width else 0.0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    return {
        "width": width,
        "params": params,
        "archive_mib": archive / 2**20,
        "peak_rss_mib": peak_kib / 1024,
        "engine_s": run_seconds,
        "child_wall_s": wall,
        "fwdbwd_s": fwdbwd,
    }


def _plain_step(model: Any, x: Any, y: Any) -> float:
    """Median of 3 plain forward+backward passes of the same model and batch, in this process."""
    import torch

    times = []
    for _ in range(4):
        model.zero_grad()
        started = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="256,1024,2048,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checks", default="standard")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.checks)))
        return
    print(f"MLP stack: {DEPTH} x (Linear, LayerNorm, GELU) + head, batch {BATCH}, checks {args.checks}, CPU, bwrap")
    print(
        f"{'width':>6} {'params':>12} {'archive MiB':>12} {'peak RSS MiB':>13} {'engine s':>9} "
        f"{'child wall s':>13} {'fwd+bwd s':>10}"
    )
    for width in [0, *(int(w) for w in args.widths.split(","))]:
        rows = []
        for _ in range(args.repeats):
            done = subprocess.run(
                [sys.executable, __file__, "--one", str(width), "--checks", args.checks],
                capture_output=True,
                text=True,
                check=True,
                cwd=HERE.parent,
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        first = rows[0]
        label = "idle" if width == 0 else str(width)
        print(
            f"{label:>6} {first['params']:>12,} {first['archive_mib']:>12.1f} "
            f"{max(r['peak_rss_mib'] for r in rows):>13.0f} {statistics.median(r['engine_s'] for r in rows):>9.3f} "
            f"{statistics.median(r['child_wall_s'] for r in rows):>13.2f} "
            f"{statistics.median(r['fwdbwd_s'] for r in rows):>10.4f}"
        )


if __name__ == "__main__":
    main()
