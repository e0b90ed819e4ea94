"""watch() under GradScaler, torch.compile and DDP: the same numbers as a plain eager reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from gradhealth.sdk.watching import watch
from torch import nn

from .servers import free_port
from .test_watch_support import Net, Reference, assert_matches, batches, recording_client, twin


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)


def _grad_scaler() -> Any:
    try:
        return torch.amp.GradScaler("cpu", init_scale=2.0**14)
    except (AttributeError, RuntimeError, TypeError) as exc:
        pytest.skip(f"torch.amp.GradScaler('cpu') is not available in torch {torch.__version__}: {exc}")


def test_grad_scaler_logs_unscaled_grads_and_skips_overflow_steps() -> None:
    model, ref_model = twin(Net)
    opt, ref_opt = _sgd(model), _sgd(ref_model)
    scaler = _grad_scaler()
    client = recording_client()
    data = batches(6)
    overflow = 2
    with watch(model, opt, run="amp", client=client, scaler=scaler, param_every=1) as handle:
        for step, (x, y) in enumerate(data):
            loss = F.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            if step == overflow:
                model.head.weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            handle.log(loss=loss)
    reference = Reference(ref_model, ref_opt)
    for step, (x, y) in enumerate(data):  # no scaler; the overflow step is simply not taken
        F.mse_loss(ref_model(x), y).backward()
        if step != overflow:
            reference.before_step(step)
            ref_opt.step()
            reference.after_step()
        ref_opt.zero_grad()
    logged = client.runs.steps()
    assert sorted(logged) == [0, 1, 3, 4, 5]  # the skipped step leaves a gap, not a record
    assert handle.skipped_steps == 1 and scaler.get_scale() < 2.0**14
    assert_matches(logged, reference.steps)
    assert client.runs.created[0]["config"]["grad_scaler"]["init_scale"] == 2.0**14
    assert "step" not in vars(scaler)  # close() gave GradScaler.step back


def _compiled_matches_eager(backend: str, rtol: float) -> None:
    model, ref_model = twin(Net)
    compiled = torch.compile(model, backend=backend)
    opt, ref_opt = _sgd(model), _sgd(ref_model)
    client = recording_client()
    data = batches(4)
    with watch(compiled, opt, run="compiled", client=client, param_every=1) as handle:
        for x, y in data:
            loss = F.mse_loss(compiled(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            handle.log(loss=loss)
    reference = Reference(ref_model, ref_opt).train(data)
    assert [layer["name"] for layer in client.runs.created[0]["layers"]] == list(reference.layers)
    assert_matches(client.runs.steps(), reference.steps, rtol=rtol, atol=1e-6)


def test_torch_compile_aot_eager_matches_eager() -> None:
    _compiled_matches_eager("aot_eager", rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="inductor needs a C compiler")
def test_torch_compile_inductor_matches_eager() -> None:
    _compiled_matches_eager("inductor", rtol=1e-4)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One DDP process: trains on its half of each batch; rank 0's watch ships, rank 1's must not."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(Net(), find_unused_parameters=True)
        opt = _sgd(model)
        client = recording_client()
        with watch(model, opt, run="ddp", client=client, param_every=1) as handle:
            for x, y in batches(4):
                half = x.shape[0] // world
                loss = F.mse_loss(model(x[rank * half : (rank + 1) * half]), y[rank * half : (rank + 1) * half])
                loss.backward()
                opt.step()
                opt.zero_grad()
                handle.log(loss=loss)
        steps = {
            str(step): {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}
            for step, row in client.runs.steps().items()
        }
        result = {"calls": client.runs.calls, "active": handle.active, "steps": steps, "created": client.runs.created}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        # both ranks done before either tears gloo down: a rank leaving while its peer still closes its watch
        # aborted once in CI ("terminate called without an active exception", SIGABRT at exit)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_only_rank_zero_ships_and_its_numbers_equal_the_full_batch(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank1 == {"calls": 0, "active": False, "steps": {}, "created": []}
    assert rank0["active"] and rank0["created"][0]["config"]["world_size"] == 2
    assert [layer["name"] for layer in rank0["created"][0]["layers"]][:2] == ["(root)", "encoder.0"]  # no `module.`
    torch.manual_seed(0)
    ref_model = Net()
    ref_opt = _sgd(ref_model)
    reference = Reference(ref_model, ref_opt).train(batches(4))  # one process, the full batch
    logged = {
        int(step): {k: np.asarray(v, dtype=float) for k, v in row.items()} for step, row in rank0["steps"].items()
    }
    assert_matches(logged, reference.steps, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_numbers_match_and_the_hooks_never_sync_the_stream() -> None:
    model, ref_model = twin(Net)
    model, ref_model = model.cuda(), ref_model.cuda()

    def adam(m: nn.Module) -> torch.optim.Optimizer:  # a tensor lr on the device travels in the stats vector
        params = [p for p in m.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=torch.tensor(1e-2, device="cuda"), capturable=True)

    opt, ref_opt = adam(model), adam(ref_model)
    client = recording_client()
    data = [(x.cuda(), y.cuda()) for x, y in batches(4)]
    with watch(model, opt, run="cuda", client=client, param_every=1) as handle:
        for step, (x, y) in enumerate(data):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            if step:  # from the second step on (index tensors are built at the first), nothing may sync
                torch.cuda.set_sync_debug_mode("error")
            try:
                opt.step()
                handle.log(loss=loss)
            finally:
                torch.cuda.set_sync_debug_mode(0)
            opt.zero_grad()
    reference = Reference(ref_model, ref_opt)
    losses = []
    for step, (x, y) in enumerate(data):
        loss = F.mse_loss(ref_model(x), y)
        loss.backward()
        losses.append(loss.item())
        reference.before_step(step)
        ref_opt.step()
        reference.after_step()
        ref_opt.zero_grad()
    logged = client.runs.steps()
    assert_matches(logged, reference.steps, rtol=1e-5, atol=1e-6)
    assert [logged[s]["loss"] for s in range(4)] == pytest.approx(losses, rel=1e-5)
    assert client.runs.created[0]["config"]["device"].startswith("cuda")
