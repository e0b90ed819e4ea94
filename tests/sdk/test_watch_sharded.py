"""watch() under FSDP2 (gloo, 2 CPU processes): distributions merged from the shards, and a failure on one rank.

Distributions: each rank summarises its local shards in KNOTS quantiles, rank 0 merges them
(gradhealth.sdk.watching._shard_sketch). The shipped sketches are checked against the same model
trained on one process: counts, minimum and maximum exact, each interior quantile within the
stated rank error d = 1/(KNOTS-1) + R/N of the full tensor's values.

Failures: an internal error in watch()'s hooks on rank 1 (before the all_reduce, or after it) must
not leave rank 0 waiting in the collective: every rank stops watching at the same recorded step and
training runs to the end on both. Before the fix rank 0 hung in all_reduce (the process group's
60 s timeout and pytest-timeout turn that into a failure here).
"""

from __future__ import annotations

import datetime
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from gradhealth.sdk.watching import WatchWarning, watch
from gradhealth.sdk.watching._shard_sketch import KNOTS, LEVELS, merge
from gradhealth.sdk.watching._sketch import QUANTILES, sketch
from torch import nn

from ..service.procs import free_port
from .test_watch_support import count_all_reduce, recording_client

pytestmark = pytest.mark.timeout(300)

STEPS = 6
SKETCH_EVERY = 2
FAIL_AT = 3  # the optimizer step whose hook fails on rank 1


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 301), nn.ReLU(), nn.Linear(301, 5))  # 301 rows shard unevenly; ReLU: tied zeros


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 32, generator=generator), torch.randn(16, 5, generator=generator)) for _ in range(STEPS)]


def _shard(model: nn.Sequential) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for index in (0, 2):
        fully_shard(model[index])
    return fully_shard(model)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timeout)
    for mode in ("sketch", "adaptive", "fail_before", "fail_after"):
        _train(rank, mode, out)
        dist.barrier()
    dist.destroy_process_group()


def _inject(handle: Any, mode: str) -> None:
    """Rank 1 only: make one hook fail at FAIL_AT, before the all_reduce (the sample) or after it (attach)."""
    if mode == "fail_before":
        owner, name = handle._stats, "sample"
    else:
        owner, name = handle._extras, "attach"
    original = getattr(owner, name)

    def failing(*args: Any, **kwargs: Any) -> Any:
        if handle.steps_taken == FAIL_AT:
            raise RuntimeError(f"injected failure in {name}")
        return original(*args, **kwargs)

    setattr(owner, name, failing)


def _train(rank: int, mode: str, out: str) -> None:
    model = _shard(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    calls, restore_all_reduce = count_all_reduce()
    client = recording_client()
    taken = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distributions: bool | int = True if mode == "adaptive" else SKETCH_EVERY  # adaptive: rank 0's offer, agreed
        with watch(model, opt, run=mode, client=client, budget=None, distributions=distributions) as handle:
            if rank == 1 and mode not in ("sketch", "adaptive"):
                _inject(handle, mode)
            for x, y in data():
                half = slice(rank * 8, (rank + 1) * 8)
                F.mse_loss(model(x[half]), y[half]).backward()
                opt.step()
                opt.zero_grad()
                taken += 1
            stopped = handle._closed
    restore_all_reduce()
    sketches: dict[str, Any] = {}
    for batch in client.runs.batches:
        section = batch.get("distributions")
        if section:
            steps = section["steps"]
            for kind in ("grad", "weight"):
                values = np.frombuffer(section[kind], dtype="<f4").reshape(len(steps), 2, -1)
                for row, step in enumerate(steps):
                    sketches.setdefault(str(step), {})[kind] = values[row].tolist()
    result = {
        "taken": taken,
        "stopped": stopped,
        "steps": sorted(client.runs.steps()),
        "all_reduce": calls["all_reduce"],
        "sketches": sketches,
        "warnings": [str(w.message) for w in caught if w.category is WatchWarning],
    }
    Path(out, f"{mode}-rank{rank}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sharded")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


def _load(shipped: Path, mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return tuple(json.loads((shipped / f"{mode}-rank{r}.json").read_text()) for r in (0, 1))  # type: ignore[return-value]


def _reference() -> dict[int, dict[str, list[torch.Tensor]]]:
    """Per sketched step, each layer's full gradient and weight values on one process (full batches)."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out: dict[int, dict[str, list[torch.Tensor]]] = {}
    for step, (x, y) in enumerate(data()):
        F.mse_loss(model(x), y).backward()
        if step % SKETCH_EVERY == 0:
            layers = [model[0], model[2]]
            out[step] = {
                "grad": [torch.cat([p.grad.reshape(-1) for p in m.parameters()]).double() for m in layers],
                "weight": [torch.cat([p.detach().reshape(-1) for p in m.parameters()]).double() for m in layers],
            }
        opt.step()
        opt.zero_grad()
    return out


def _check_within_rank_error(values: torch.Tensor, got: list[float], ranks: int) -> None:
    """Counts, min and max as one process's sketch; each interior quantile within d of its level."""
    want = sketch([values]).double()
    assert got[9:] == want[9:].tolist()  # zeros, non-finite, count: exact
    assert got[0] == pytest.approx(want[0].item(), rel=1e-5, abs=1e-7)
    assert got[8] == pytest.approx(want[8].item(), rel=1e-5, abs=1e-7)
    finite = values[torch.isfinite(values)]
    n = finite.numel()
    d = 1 / (KNOTS - 1) + ranks / n
    slack = 1e-5 * float(finite.abs().max())  # float rounding between sharded and one-process values
    for level, q in zip(QUANTILES[1:-1], got[1:8], strict=True):
        below = int((finite < q - slack).sum()) / n
        at_most = int((finite <= q + slack).sum()) / n
        assert below - d <= level <= at_most + d, (level, q, below, at_most, d)


def test_fsdp_distributions_match_one_process_within_the_stated_rank_error(shipped: Path) -> None:
    rank0, rank1 = _load(shipped, "sketch")
    assert rank1["steps"] == [] and rank1["sketches"] == {}
    assert rank0["all_reduce"] == rank1["all_reduce"] == STEPS  # the summaries ride in the step's one all_reduce
    reference = _reference()
    assert sorted(int(s) for s in rank0["sketches"]) == sorted(reference) == list(range(0, STEPS, SKETCH_EVERY))
    for step, kinds in rank0["sketches"].items():
        for kind in ("grad", "weight"):
            for layer, got in enumerate(kinds[kind]):
                _check_within_rank_error(reference[int(step)][kind][layer], got, ranks=2)


def test_merge_of_uneven_shards_with_ties_empty_and_non_finite_ranks() -> None:
    generator = torch.Generator().manual_seed(3)
    for trial in range(5):
        full = torch.randn(5000 + 997 * trial, generator=generator) * (trial + 1)
        full[torch.rand(full.numel(), generator=generator) < 0.2] = 0.0  # a tie of a fifth of the values
        full[: 3 + trial] = float("nan")
        full[-2] = float("inf")
        cuts = sorted(torch.randint(0, full.numel(), (3,), generator=generator).tolist())
        parts = [full[: cuts[0]], full[cuts[0] : cuts[1]], full[cuts[1] : cuts[2]], full[cuts[2] :], full[:0]]
        parts.append(torch.full((7,), float("nan")))
        rows = torch.stack([sketch([p], levels=LEVELS) for p in parts]).double()[:, None, :]
        got = merge(rows)[0]
        values = torch.cat([full, parts[-1]]).double()
        _check_within_rank_error(values, got.tolist(), ranks=len(parts))
    nothing = merge(torch.stack([sketch([torch.full((3,), float("nan"))], levels=LEVELS)]).double()[:, None, :])[0]
    assert torch.isnan(nothing[:9]).all() and nothing[9:].tolist() == [0.0, 3.0, 3.0]


@pytest.mark.parametrize(("mode", "last_recorded"), [("fail_before", FAIL_AT - 1), ("fail_after", FAIL_AT)])
def test_a_failure_on_one_rank_stops_watch_on_every_rank_without_a_hang(
    shipped: Path, mode: str, last_recorded: int
) -> None:
    rank0, rank1 = _load(shipped, mode)
    assert rank0["taken"] == rank1["taken"] == STEPS  # both trained to the end: nobody waited in a collective
    assert rank0["stopped"] and rank1["stopped"]
    assert rank0["all_reduce"] == rank1["all_reduce"] == last_recorded + 2  # the flagging step's all_reduce is the last
    assert rank0["steps"] == list(range(last_recorded + 1))  # what was recorded before still ships
    assert any("after an internal error on rank 1" in w for w in rank0["warnings"]), rank0["warnings"]
    assert any("rank 1's own error" in w and "injected failure" in w for w in rank1["warnings"]), rank1["warnings"]


def test_fsdp_default_distributions_follow_the_stride_rank_0_offers(shipped: Path) -> None:
    """distributions=True: every rank sketches at the stride rank 0 offered in the previous all_reduce."""
    from gradhealth.sdk.watching._sketch import FLOOR

    rank0, rank1 = _load(shipped, "adaptive")
    steps = sorted(int(s) for s in rank0["sketches"])
    assert rank1["sketches"] == {}
    # step 0 has no agreed stride yet (the offer travels in step 0's all_reduce); the next is FLOOR steps on
    assert steps == list(range(1, rank0["taken"], FLOOR)) and steps == [1]
    assert rank0["all_reduce"] == rank0["taken"]  # the stride rides in the step's one all_reduce
