"""Both GradHealthCallbacks in real 2-process DDP fits (gloo, CPU) with on_finding=stop_training.

Each rank is launched the way torchrun launches it (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT in
its environment), and the framework itself sets up DDP: Lightning's `strategy="ddp"`, the Trainer's
accelerate. Only rank 0 ships and hears the service's findings; the relay (client_sdk/watching/_relay.py)
must still stop both ranks after the same optimizer step, within one shipping interval of the finding,
and each rank's fit must then end on its own (a rank left in a collective would time the group out).
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

import gradhealth
from gradhealth.actions import stop_training

from ..service.procs import free_port
from .servers import Served

pytest.importorskip("lightning.pytorch", reason="the lightning extra: pip install -e '.[lightning]'")
pytest.importorskip("transformers", reason="the hf extra: pip install -e '.[hf]'")
pytest.importorskip("accelerate", reason="the hf extra: pip install -e '.[hf]'")

DIVERGE_AT = 40  # the optimizer step from which the lr is 3.0 on every rank
MAX_STEPS = 300
B = 8  # records per batch (flush_interval of an hour): the shipping interval, in optimizer steps
CONFIRM = 10  # loss_divergence confirms a rise within 10 logged steps


def _options() -> dict[str, Any]:
    return {"budget": None, "flush_interval": 3600.0, "batch_steps": B, "param_every": 1}


def _lightning(rank: int, client: gradhealth.Client, root: Path) -> dict[str, Any]:
    """A diverging Lightning DDP fit on this rank; what its callback saw."""
    from lightning.pytorch.strategies import DDPStrategy

    from gradhealth.integrations.lightning import GradHealthCallback

    from .test_callbacks_lightning import Regressor, _fit

    callback = GradHealthCallback("lightning-ddp", client, on_finding=stop_training, **_options())
    strategy = DDPStrategy(process_group_backend="gloo", timeout=datetime.timedelta(seconds=120))
    trainer = _fit(Regressor(diverge_at=DIVERGE_AT), callback, root, MAX_STEPS, devices=2, strategy=strategy)
    result = _outcome(callback, trainer.global_step)
    if rank == 0:
        result["metrics_header"] = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()[0]
    return result


def _transformers(rank: int, client: gradhealth.Client, root: Path) -> dict[str, Any]:
    """A diverging Trainer.train() under DDP on this rank; what its callback saw."""
    from gradhealth.integrations.transformers import GradHealthCallback

    from .test_callbacks_transformers import Probe, Regressor, _train

    model = Regressor()
    callback = GradHealthCallback("hf-ddp", client, on_finding=stop_training, **_options())
    trainer = _train(root, callback, Probe(model, diverge_at=DIVERGE_AT), MAX_STEPS, ddp_backend="gloo")
    return _outcome(callback, trainer.state.global_step)


def _outcome(callback: Any, taken: int) -> dict[str, Any]:
    watch = callback.watch
    return {
        "world": dist.get_world_size() if dist.is_initialized() else 1,
        "taken": taken,
        "findings": [f"{f.rule}@{f.step}" for f in callback.findings],
        "run_id": watch.run_id if watch is not None else None,
        "reported_steps": callback.report.metrics["steps"] if callback.report is not None else None,
        "reported_findings": [f"{f.rule}@{f.step}" for f in callback.report.findings_at_least("error")]
        if callback.report is not None
        else None,
    }


def _worker(rank: int, framework: str, port: int, base_url: str, key: str, out: str) -> None:
    """One rank, launched as torchrun would: the framework reads the environment and sets up DDP itself."""
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "0"}
    )
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    root = Path(out, f"rank{rank}")
    root.mkdir(exist_ok=True)
    with gradhealth.Client(base_url=base_url, api_key=key) as client:
        fit = _lightning if framework == "lightning" else _transformers
        result = fit(rank, client, root)
    dist.barrier()  # both fits ended: neither rank was left waiting in a collective
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=["lightning", "hf"])
def ran(request: pytest.FixtureRequest, served: Served, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """Both ranks' outcomes of one diverging DDP fit of the framework, from one 2-process spawn."""
    framework = request.param
    key = served.admin("create-project", f"callbacks-ddp-{framework}").strip()
    out = tmp_path_factory.mktemp(f"ddp-{framework}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(framework, free_port(), served.base_url, key, str(out)), nprocs=2, join=True)
    return tuple(json.loads(Path(out, f"rank{r}.json").read_text()) for r in (0, 1))  # type: ignore[return-value]


def test_stop_training_ends_both_ranks_at_the_same_step_within_one_shipping_interval(ran: tuple[Any, Any]) -> None:
    rank0, rank1 = ran
    assert rank0["world"] == rank1["world"] == 2  # the framework set up the process group from the environment
    assert rank0["findings"], "no finding reached rank 0's callback"
    assert rank1["findings"] == rank0["findings"]  # relayed: the same findings, acted on at the same step
    assert rank0["taken"] == rank1["taken"] < MAX_STEPS
    first = rank0["findings"][0]
    step = int(first.split("@")[1])
    assert DIVERGE_AT <= step < rank0["taken"]
    assert rank0["taken"] <= ((step + CONFIRM) // B + 2) * B, (first, rank0["taken"])
    assert first in rank0["reported_findings"]


def test_rank_zero_alone_ships_a_report_of_every_step(ran: tuple[Any, Any]) -> None:
    rank0, rank1 = ran
    assert rank0["run_id"] is not None and rank0["reported_steps"] == rank0["taken"]
    assert rank1["run_id"] is None and rank1["reported_steps"] is None
    if "metrics_header" in rank0:  # Lightning: the finding reached the trainer's logger on rank 0
        assert f"gradhealth/{rank0['findings'][0].split('@')[0]}" in rank0["metrics_header"].split(",")
