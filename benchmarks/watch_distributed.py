"""Step-time overhead of `gradhealth.watch()` under DDP and FSDP2 on 2 CPU processes (gloo), for watch_overhead.py.

Each rank trains two copies of the model with the same initial weights, both wrapped the same way
(DistributedDataParallel, or fully_shard per child module and the root): the plain loop and the loop
under `gradhealth.watch(model, optimizer)` at its defaults (rank 0 ships to the benchmark's sink;
under FSDP every rank takes part in watch()'s one all_reduce per recorded step, which also carries
the shard summaries of the distributions at the sketch stride). Paired rounds as in
watch_overhead.py (rotating order, every round starting with a barrier; the watched copy's shipping
flushed after its round and the shipping thread's CPU time charged to it); rank 0 reports each
round's time and the overhead is estimated as there (benchmarks/_paired.py: total-time ratio with a
95% bootstrap interval over rounds). Each process runs torch on one thread; with 2 processes on a
machine of 2 cores they take both, and contend with the sink and anything else running: read the
machine's load with the numbers.

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
from collections.abc import Callable
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


def _step_time(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    after: Callable[[], float] = lambda: 0.0,
) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - start + after()) / steps


def _rank(
    rank: int,
    port: int,
    mode: str,
    case_name: str,
    sink: tuple[str, str],
    plan: tuple[int, int, int, float],
    out: str,
) -> None:
    """One rank: plain and watched copies, paired rounds; rank 0 writes each round's times."""
    from watch_overhead import CASES, shipping_charge

    warnings.filterwarnings("ignore", category=WatchWarning)
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")  # the models return views; nothing edits them
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    rounds, steps, warmup, round_seconds = plan
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
    charge = {0: lambda: 0.0, 1: shipping_charge(handle)}
    for index in (0, 1):
        _step_time(*copies[index], x, y, warmup)
        charge[index]()  # the first flush opens the connection: not a round's cost
    if not steps:  # about round_seconds of the plain loop, the same on every rank
        per_step = _step_time(*copies[0], x, y, 5)
        agreed = torch.tensor([max(2, round(round_seconds / per_step))])
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        steps = int(agreed.item())
    for r in range(rounds):
        for index in (r % 2, 1 - r % 2):
            dist.barrier()
            times[index].append(_step_time(*copies[index], x, y, steps, charge[index]))
    sketch_stride = handle.sketch_stride  # under FSDP: the stride rank 0 chose, agreed by every rank
    result = {
        "plain": times[0],
        "watched": times[1],
        "steps": steps,
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


def measure(
    mode: str,
    case_name: str,
    sink: tuple[str, str],
    rounds: int,
    steps: int,
    warmup: int,
    round_seconds: float = 0.8,
) -> dict[str, Any]:
    """Rank 0's overhead Estimate and median plain step time in a 2-process run, and the strides watch() chose."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _paired import paired

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        plan = (rounds, steps, warmup, round_seconds)
        mp.spawn(_rank, args=(_free_port(), mode, case_name, sink, plan, out), nprocs=2, join=True)
        result: dict[str, Any] = json.loads(Path(out).read_text())
    result["overhead"] = paired(result["plain"], result["watched"])
    result["plain"] = statistics.median(result["plain"])
    return result
