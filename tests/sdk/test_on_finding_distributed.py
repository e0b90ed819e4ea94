"""watch(on_finding=...) under torch.distributed (gloo, 2 CPU processes) against a real `gradhealth serve`.

Only rank 0 hears the service's findings; the action must still run on every rank after the same step
(client_sdk/watching/_relay.py). A diverging DDP and FSDP2 loop: `stop_training` ends both ranks' loops
at the same step, within one shipping interval of the finding (the bound of test_on_finding), and the
ranks then meet at a barrier (a rank left behind in a collective would time the group out instead);
`lower_lr` and `checkpoint_and_continue` act on both ranks at once, so the replicas stay equal.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gradhealth
from gradhealth.actions import StopTraining, checkpoint_and_continue, lower_lr, stop_training

from ..service.procs import free_port
from .servers import Served
from .test_on_finding import CONFIRM, DIVERGE_AT, STEPS, B, _setup
from .test_watch_support import count_all_reduce

SCENARIOS = [(mode, action) for mode in ("ddp", "fsdp") for action in ("stop", "lower")]


def _wrap(model: nn.Sequential, mode: str) -> nn.Module:
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for index in (0, 2, 4):
        fully_shard(model[index])
    return fully_shard(model)


def _equal_across_ranks(values: torch.Tensor) -> bool:
    """Whether every rank holds the same values, NaN where the other has NaN (an all_gather of this rank's copy)."""
    gathered = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, values)
    return all(torch.allclose(gathered[0], other, rtol=0, atol=0, equal_nan=True) for other in gathered[1:])


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _run(rank: int, mode: str, action: str, base_url: str, key: str, out: Path) -> dict[str, Any]:
    """The diverging loop of test_on_finding on this rank's half of each batch; what happened, as JSON."""
    model, opt, x, y = _setup()
    model = _wrap(model, mode)  # fully_shard swaps the parameters for DTensors: the optimizer must see those
    opt = type(opt)(model.parameters(), **{k: opt.defaults[k] for k in ("lr", "momentum")})
    seen: list[str] = []
    lower, save = lower_lr(0.1), checkpoint_and_continue(out / f"{mode}-{{rule}}-{{step}}.pt")

    def act(finding: gradhealth.Finding, watch: gradhealth.Watch) -> None:
        seen.append(f"{finding.rule}@{finding.step}")
        lower(finding, watch)
        save(finding, watch)

    client = gradhealth.Client(base_url=base_url, api_key=key) if rank == 0 else None
    calls, restore = count_all_reduce()
    handle = gradhealth.watch(
        model, opt, run=f"{mode}-{action}", client=client, budget=None, flush_interval=3600.0, batch_steps=B,
        on_finding=stop_training if action == "stop" else act,
    )  # fmt: skip
    taken, stopped_by = 0, None
    try:
        with handle:
            for step in range(STEPS):
                if step == DIVERGE_AT:
                    opt.param_groups[0]["lr"] = 3.0
                batch = torch.randint(0, 256, (32,), generator=torch.Generator().manual_seed(step))
                half = batch[rank * 16 : (rank + 1) * 16]
                loss = nn.functional.mse_loss(model(x[half]), y[half])
                opt.zero_grad()
                loss.backward()
                opt.step()
                handle.log(loss=loss)
                taken += 1
    except StopTraining as stop:
        taken += 1  # the step whose post-step hook raised was taken
        stopped_by = f"{stop.finding.rule}@{stop.finding.step}"
    restore()
    dist.barrier()  # every rank got here: none is left waiting in a collective
    result: dict[str, Any] = {
        "taken": taken,
        "stopped_by": stopped_by,
        "seen": seen,
        "lr": opt.param_groups[0]["lr"],
        "replicas_equal": _equal_across_ranks(_flat(model)) if mode == "ddp" else None,
        "all_reduce": calls["all_reduce"],
        "checkpoints": sorted(p.name for p in out.glob(f"{mode}-*.pt*")),
    }
    if rank == 0:
        report = handle.report()
        result["findings"] = [f"{f.rule}@{f.step}" for f in report.findings_at_least("error")]
        result["steps_reported"] = report.metrics["steps"]
    return result


def _worker(rank: int, world: int, port: int, base_url: str, key: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )  # fmt: skip
    results = {}
    for mode, action in SCENARIOS:
        folder = Path(out, f"{mode}-{action}")
        folder.mkdir(exist_ok=True)
        dist.barrier()
        results[f"{mode}-{action}"] = _run(rank, mode, action, base_url, key, folder)
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ran(served: Served, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Every scenario on both ranks, from one 2-process spawn."""
    key = served.admin("create-project", "on-finding-distributed").strip()
    out = tmp_path_factory.mktemp("relay")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, free_port(), served.base_url, key, str(out)), nprocs=2, join=True)
    rank0, rank1 = (json.loads(Path(out, f"rank{r}.json").read_text()) for r in (0, 1))
    return rank0, rank1, out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_stop_training_stops_every_rank_at_the_same_step_within_one_shipping_interval(
    mode: str, ran: tuple[dict[str, Any], dict[str, Any], Path]
) -> None:
    rank0, rank1 = ran[0][f"{mode}-stop"], ran[1][f"{mode}-stop"]
    assert rank0["stopped_by"] is not None and rank0["stopped_by"] == rank1["stopped_by"]
    assert rank0["taken"] == rank1["taken"] < STEPS
    assert rank0["stopped_by"] in rank0["findings"]
    step = int(rank0["stopped_by"].split("@")[1])
    assert DIVERGE_AT <= step <= DIVERGE_AT + 20
    assert step < rank0["taken"] <= ((step + CONFIRM) // B + 2) * B, (rank0["taken"], step)
    assert rank0["steps_reported"] == rank0["taken"]
    assert rank0["all_reduce"] == rank1["all_reduce"]  # the same collectives on both ranks: none left waiting


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_lower_lr_and_checkpoint_act_on_every_rank_at_once(
    mode: str, ran: tuple[dict[str, Any], dict[str, Any], Path]
) -> None:
    rank0, rank1 = ran[0][f"{mode}-lower"], ran[1][f"{mode}-lower"]
    assert rank0["taken"] == rank1["taken"] == STEPS
    assert rank0["seen"] and rank0["seen"] == rank1["seen"]  # the same findings, each once, on both ranks
    assert set(rank0["seen"]) <= set(rank0["findings"])
    assert rank0["lr"] == rank1["lr"] == pytest.approx(3.0 * 0.1 ** len(rank0["seen"]))
    folder = ran[2] / f"{mode}-lower"
    expected = {f"{mode}-{s.replace('@', '-')}.pt" for s in rank0["seen"]}
    if mode == "ddp":
        assert rank0["replicas_equal"] is True  # both replicas took the same updates after each lowering
        assert set(rank0["checkpoints"]) == expected  # rank 0 alone writes: the replicas are equal
    else:
        expected = {f"{name}.rank{r}" for name in expected for r in (0, 1)}
        assert set(rank0["checkpoints"]) == expected  # each rank its own shards
    for name in expected:
        saved = torch.load(folder / name, weights_only=True)  # DTensors saved as local tensors: no unpickling
        assert saved["finding"]["rule"] + "@" + str(saved["finding"]["step"]) in rank0["seen"]


def test_relay_payload_round_trips_within_its_bound() -> None:
    """The relay's wire format: findings round-trip, a payload never exceeds MAX_PAYLOAD, oversize ones drop."""
    from gradhealth.sdk.watching._relay import MAX_PAYLOAD, decode, encode

    finding = gradhealth.Finding(
        rule="loss_divergence", severity="error", title="t", message="m", step=3, confidence=0.9
    )
    payload, left, dropped = encode([finding, finding])
    assert decode(payload) == [finding, finding] and left == [] and dropped == 0
    size = len(finding.model_dump_json()) + 3
    payload, left, dropped = encode([finding] * 5, limit=2 * size)
    assert len(payload) <= 2 * size and len(decode(payload)) + len(left) == 5 and dropped == 0
    assert encode([finding], limit=10) == (b"", [], 1)
    assert encode([]) == (b"", [], 0) and MAX_PAYLOAD >= 1 << 16
