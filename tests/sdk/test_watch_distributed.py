"""watch() under torch.distributed (gloo, 2 CPU processes): DDP and FSDP2 numbers equal a one-process run's.

Each rank trains on its half of every batch; the mean loss makes the all-reduced gradient the
full batch's, so rank 0's per-layer norms must equal those of the same model trained on the whole
batch in one process (computed by hand, tests/sdk/test_watch_support.Reference). Rank 1 ships nothing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from gradhealth.sdk.watching import watch
from torch import nn

from ..service.procs import free_port
from .test_watch_support import Reference, count_all_reduce, recording_client

STEPS = 6
METRICS = ("grad_norm", "grad_max_abs", "nonfinite", "weight_norm", "update_norm")


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 15), nn.Tanh(), nn.Linear(15, 3))  # 15 rows shard unevenly (8 + 7)


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 8, generator=generator), torch.randn(16, 3, generator=generator)) for _ in range(STEPS)]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: DDP, then FSDP2 (one process group, one spawn: starting processes is the slow part)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    for mode in ("ddp", "fsdp"):
        _train(rank, mode, out)
        dist.barrier()
    dist.destroy_process_group()


def _train(rank: int, mode: str, out: str) -> None:
    """Wrap the model (DDP or fully_shard), train watched on this rank's half, write what it shipped."""
    model: nn.Module = make_model()
    if mode == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for index in (0, 2):
            fully_shard(model[index])  # type: ignore[index]
        fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    calls, restore_all_reduce = count_all_reduce()
    client = recording_client()
    with watch(model, opt, run=mode, client=client, budget=None, param_every=2) as handle:
        for x, y in data():
            half = slice(rank * 8, (rank + 1) * 8)
            F.mse_loss(model(x[half]), y[half]).backward()
            opt.step()
            opt.zero_grad()
    restore_all_reduce()
    steps = {str(k): {m: [float(v) for v in row[m]] for m in METRICS} for k, row in client.runs.steps().items()}
    created = client.runs.created
    result = {"calls": client.runs.calls, "steps": steps, "all_reduce": calls["all_reduce"], "created": created}
    Path(out, f"{mode}-rank{rank}.json").write_text(json.dumps(result))
    assert handle.rank == rank


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both modes' records from one 2-process spawn."""
    out = tmp_path_factory.mktemp("distributed")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


def _reference() -> dict[int, dict[str, Any]]:
    model = make_model()
    return Reference(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)).train(data()).steps


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_per_layer_norms_equal_one_process_and_rank_one_ships_nothing(mode: str, shipped: Path) -> None:
    rank0, rank1 = (json.loads((shipped / f"{mode}-rank{r}.json").read_text()) for r in (0, 1))
    assert rank1["calls"] == 0 and rank1["steps"] == {}  # no run created, no batch sent
    assert [layer["name"] for layer in rank0["created"][0]["layers"]] == ["0", "2"]
    assert [layer["type"] for layer in rank0["created"][0]["layers"]] == ["Linear", "Linear"]  # not FSDPLinear
    assert [layer["num_parameters"] for layer in rank0["created"][0]["layers"]] == [135, 48]  # full, not a shard
    reference = _reference()
    assert sorted(int(k) for k in rank0["steps"]) == list(range(STEPS))
    measured = 0
    for step, row in rank0["steps"].items():
        for metric in METRICS:
            for layer, value in enumerate(row[metric]):
                if math.isnan(value):
                    continue  # not sampled this step (param_every)
                expected = reference[int(step)][metric][layer]
                assert value == pytest.approx(expected, rel=1e-5, abs=1e-7), (mode, step, metric, layer)
                measured += 1
    assert measured >= STEPS * 2 * 2 + STEPS * 3  # grad_norm, nonfinite every step; the sampled ones in turn
    if mode == "fsdp":
        assert rank0["all_reduce"] == rank1["all_reduce"] == STEPS  # exactly one all_reduce per recorded step
    else:
        assert rank0["all_reduce"] == 0  # DDP: the hooks read the all-reduced .grad, no communication of ours
