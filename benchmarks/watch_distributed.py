"""Step-time overhead of `gradhealth.watch()` under DDP and FSDP2 on 2 CPU processes (gloo), for watch_overhead.py.

Each rank trains two copies of the model with the same initial weights, both wrapped the same way
(DistributedDataParallel, or fully_shard per child module and the root): the plain loop and the loop
under `gradhealth.watch(model, optimizer)` at its defaults (rank 0 ships to the benchmark's sink;
under FSDP every rank takes part in watch()'s one all_reduce per recorded step, which also carries
the shard summaries of the distributions at the sketch stride). Rounds are
interleaved as in watch_overhead.py, every round starting with a barrier; rank 0 reports the median
step time of each copy. With 2 processes on a machine of few cores, the processes contend with each
other and with anything else running: read the machine's load (uptime) with the numbers.

    python benchmarks/watch_overhead.py --distributed ddp,fsdp [--models cnn,mlp] [--sink stub]
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from gradhealth.sdk.watching import WatchWarning
from torch import nn

import gradhealth


def _wrap(model: nn.Module, mode: str) -> nn.Module:
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for child in model.children():
        if any(True for _ in child.parameters()):
            fully_shard(child)
    fully_shard(model)
    return model


def _step_time(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - start) / steps


def _rank(
    rank: int, port: int, mode: str, case_name: str, sink: tuple[str, str], plan: tuple[int, int, int], out: str
) -> None:
    """One rank: plain and watched copies, interleaved rounds; rank 0 writes the medians."""
    from watch_overhead import CASES

    warnings.filterwarnings("ignore", category=WatchWarning)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    rounds, steps, warmup = plan
    case = CASES[case_name]
    torch.manual_seed(0)
    base = case.build()
    copies = []
    for _ in range(2):
        model = case.build()
        model.load_state_dict(base.state_dict())
        model = _wrap(model, mode)
        copies.append((model, case.optimizer(model)))
    x, y = case.batch(torch.Generator().manual_seed(1 + rank))
    client = gradhealth.Client(base_url=sink[0], api_key=sink[1]) if rank == 0 else None
    handle = gradhealth.watch(*copies[1], run=f"bench-{mode}-{case_name}", client=client)
    times: dict[int, list[float]] = {0: [], 1: []}
    for index in (0, 1):
        _step_time(*copies[index], x, y, warmup)
    for r in range(rounds):
        for index in (r % 2, 1 - r % 2):
            dist.barrier()
            times[index].append(_step_time(*copies[index], x, y, steps))
    sketch_stride = handle.sketch_stride  # under FSDP: the stride rank 0 chose, agreed by every rank
    result = {
        "plain": statistics.median(times[0]),
        "watched": statistics.median(times[1]),
        "stride": handle.stride,
        "sketch_stride": sketch_stride,
    }
    handle.close()
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def measure(mode: str, case_name: str, sink: tuple[str, str], rounds: int, steps: int, warmup: int) -> dict[str, Any]:
    """Median plain and watched step times on rank 0 of a 2-process run, and the strides watch() chose."""
    sys.path.insert(0, str(Path(__file__).parent))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        plan = (rounds, steps, warmup)
        mp.spawn(_rank, args=(_free_port(), mode, case_name, sink, plan, out), nprocs=2, join=True)
        result: dict[str, Any] = json.loads(Path(out).read_text())
    result["overhead"] = result["watched"] / result["plain"] - 1
    return result
