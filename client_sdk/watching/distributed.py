"""watch() under torch.distributed: DDP records on rank 0 alone; FSDP2 combines local shard norms in one all-reduce.

DDP: every rank holds the same all-reduced gradients once backward() returns, so rank 0's optimizer
hooks read them as they are (no communication of ours) and the other ranks' handles are inert.

FSDP2 (`fully_shard`): each rank holds a shard of every parameter (a DTensor; `to_local()` is its
part). Every rank measures its shards and, in the post-step hook of a recorded step, all ranks
sum ONE float64 vector with all_reduce: per-layer squared gradient norms, per-tensor non-finite
flags, the sample group's squared weight and update norms, each rank's max |g| in its own row
(a sum of one-hot rows is a gather, so max-abs needs no second collective), and rank 0's stride.
The squares' sum is the full parameter's squared norm. Ranks agree on which steps they record
because rank 0's stride travels in that vector: every rank uses the last agreed one. At a sketch
step the vector also carries each rank's shard summaries (_shard_sketch), merged on rank 0, and
rank 0's sketch stride; it always ends with one failure flag per rank, so an internal error on one
rank stops watch() on every rank at the same step instead of leaving the others in the collective.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._budget import Budget
from ._layers import Layer
from ._records import Record, RecordBuffer
from ._shard_sketch import SUMMARY
from ._stats import INF, METRICS, NAN, Pending, Sample, StatsEngine, _grad, _max_abs, _norms


def _is_dtensor(tensor: Any) -> bool:
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "to_local")


def _local(tensor: Tensor) -> Tensor:
    """The part of a tensor this rank holds (the tensor itself when it is not a DTensor)."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor  # type: ignore[no-any-return,attr-defined]


def _replicas(param: Tensor, world: int) -> int:
    """How many ranks hold the same values: a plain tensor is on every rank, a sharded DTensor on one."""
    if not _is_dtensor(param):
        return world
    mesh, placements = param.device_mesh, param.placements  # type: ignore[attr-defined]
    return math.prod(mesh.size(dim) for dim, p in enumerate(placements) if p.is_replicate())


def owns(param: Tensor, rank: int) -> bool:
    """Whether this rank counts `param`'s local values in a distribution: one rank per replica group.

    A plain tensor (on every rank) counts on rank 0; a DTensor on the ranks at coordinate 0 of each
    mesh dimension it is replicated over (each shard exactly once).
    """
    if not _is_dtensor(param):
        return rank == 0
    coordinate = param.device_mesh.get_coordinate()  # type: ignore[attr-defined]
    if coordinate is None:
        return False
    placements = param.placements  # type: ignore[attr-defined]
    return all(coordinate[dim] == 0 for dim, p in enumerate(placements) if p.is_replicate())


def is_sharded(layers: list[Layer]) -> bool:
    """Whether any watched parameter is a DTensor (FSDP2's fully_shard, or tensor parallelism)."""
    return any(_is_dtensor(p) for layer in layers for p in layer.params)


class ShardedStats(StatsEngine):
    """StatsEngine on local shards; finish() completes every statistic with one all_reduce on every rank."""

    def __init__(self, layers: list[Layer], param_every: int, rank: int, world: int) -> None:
        super().__init__(layers, param_every)
        self.rank, self.world = rank, world
        self.agreed_stride: int | None = None
        self.agreed_sketch = 0  # rank 0's sketch stride (SketchSchedule.offer) as of the last all_reduce
        self.stride_source: Callable[[], int] = lambda: 1
        self.sketch_source: Callable[[], int] = lambda: 0
        self.failure: str | None = None  # this rank's internal error, flagged in the next all_reduce
        self.gathered: Tensor | None = None
        self._inverse = torch.tensor(
            [1.0 / _replicas(p, world) for p in self._params], dtype=torch.float64, device=self.device
        )
        self._group_inverse = [
            torch.tensor([1.0 / _replicas(p, world) for p in params], dtype=torch.float64, device=self.device)
            for _, params, _, _ in self._groups
        ]
        self._slot = 0

    def grads(self, grad_scale: Tensor | None = None) -> Tensor:
        """[per-layer squared grad norm (L), per-tensor non-finite flag (P)] of the local shards, float64."""
        squares = torch.zeros(self.num_layers, dtype=torch.float64, device=self.device)
        flags = torch.zeros(len(self._params), dtype=torch.float64, device=self.device)
        present = [i for i, p in enumerate(self._params) if p.grad is not None]
        if present:
            local = [_local(_grad(self._params[i])) for i in present]  # type: ignore[arg-type]
            norms = _norms(local, 2.0, self.device).double()
            where = torch.tensor(present, dtype=torch.long, device=self.device)
            owners = torch.tensor([self._owner[i] for i in present], dtype=torch.long, device=self.device)
            finite = torch.isfinite(norms)
            squares.index_add_(0, owners, torch.where(finite, norms * norms, INF) * self._inverse[where])
            flags.index_copy_(0, where, (~finite).double())
            if grad_scale is not None:
                squares /= grad_scale.to(self.device, torch.float64) ** 2
        return torch.cat([squares, flags])

    def sample(self, recorded: int, snapshot: bool, grad_scale: Tensor | None = None) -> Sample | None:
        """Local max |g|, squared weight norms and a copy of the local weights of this step's group."""
        if not self._groups:
            return None
        self._slot = recorded % len(self._groups)
        layer_ids, params, local_ids, index = self._groups[self._slot]
        if not params:  # more groups than layers (param_every > L): an empty turn
            return None
        size = len(layer_ids)
        grad_max = torch.zeros(size, device=self.device)
        grads = [(k, _grad(p)) for k, p in enumerate(params)]
        present = [(k, _local(g)) for k, g in grads if g is not None and _local(g).numel()]
        if present:
            local_index = torch.tensor([local_ids[k] for k, _ in present], dtype=torch.long, device=self.device)
            grad_max.scatter_reduce_(0, local_index, _max_abs([g for _, g in present], self.device), "amax")
            torch.nan_to_num_(grad_max, nan=INF, posinf=INF)
            if grad_scale is not None:
                grad_max /= grad_scale.to(self.device, torch.float32)
        weights = [_local(p.detach()) for p in params]
        squares = _norms(weights, 2.0, self.device).double() ** 2 * self._group_inverse[self._slot]
        norms = torch.zeros(size, dtype=torch.float64, device=self.device).index_add_(0, index, squares)
        copies = list(torch._foreach_mul(weights, 1.0)) if snapshot else None
        return Sample(layer_ids, weights, index, grad_max, norms, copies)

    def collect(self, pending: Pending | None, recorded: int, sketched: bool) -> Tensor:
        """Sum the ranks' parts in one all_reduce, then lay the record out as StatsEngine.finish does.

        Every rank takes part whatever happened to it: a rank whose watch() failed (now or since the last
        recorded step) sends zeros and its flag, and every rank then raises WatchStopped (docs/runs.md).
        """
        L, P, W = self.num_layers, len(self._params), self.world
        slot = recorded % len(self._groups) if self._groups else 0
        size = len(self._groups[slot][0]) if self._groups else 0
        lengths = (L + P, (2 + W) * size, W * 2 * L * SUMMARY if sketched else 0)
        length = sum(lengths)
        body = None
        if self.failure is None:
            try:
                body = self._parts(pending, sketched)
                if body.numel() != length:
                    raise RuntimeError(f"{body.numel()} values to all_reduce, {length} expected")
            except Exception as exc:
                self.failure = repr(exc)
        if body is None:
            body = torch.zeros(length, dtype=torch.float64, device=self.device)
        tail = torch.zeros(2 + W, dtype=torch.float64, device=self.device)
        if self.rank == 0:
            tail[0], tail[1] = float(self.stride_source()), float(self.sketch_source())
        tail[2 + self.rank] = float(self.failure is not None)
        vector = torch.cat([body, tail])
        torch.distributed.all_reduce(vector)
        self.agreed_stride = max(1, int(vector[length]))
        self.agreed_sketch = int(vector[length + 1])
        failed = [r for r in range(W) if vector[length + 2 + r] > 0]
        if failed:
            raise WatchStopped(failed, self.rank, self.failure)
        assert pending is not None  # no failure: this rank measured
        at = lengths[0] + lengths[1]
        if sketched and self.rank == 0:
            self.gathered = vector[at : at + lengths[2]].view(W, 2 * L, SUMMARY)
        out = torch.full((len(METRICS), L), NAN, device=self.device)
        out[0] = torch.nan_to_num(vector[:L].sqrt(), nan=INF, posinf=INF).float()
        flags = (vector[L : L + P] > 0).float()
        out[2] = torch.zeros(L, device=self.device).index_add_(
            0, torch.tensor(self._owner, dtype=torch.long, device=self.device), flags
        )
        sample = pending.sample
        if sample is not None:
            at = L + P
            out[3].index_copy_(0, sample.layer_ids, vector[at : at + size].sqrt().float())
            if not torch.isnan(vector[at + size : at + 2 * size]).all():
                out[4].index_copy_(0, sample.layer_ids, vector[at + size : at + 2 * size].sqrt().float())
            rows = vector[at + 2 * size : at + 2 * size + W * size].view(W, size)
            out[1].index_copy_(0, sample.layer_ids, rows.amax(dim=0).float())
        result = [out.view(-1)]
        if isinstance(pending.lr, Tensor):
            result.append(pending.lr.detach().to(self.device, torch.float32).reshape(1))
        return torch.cat(result)

    def take_gathered(self) -> Tensor | None:
        """Rank 0: every rank's shard summaries (R, 2L, SUMMARY) from the last sketched step's all_reduce."""
        gathered, self.gathered = self.gathered, None
        return gathered

    def _parts(self, pending: Pending | None, sketched: bool) -> Tensor:
        """This rank's float64 contribution: grad squares and flags, the sample group's parts, its shard summaries."""
        if pending is None:
            raise RuntimeError("the step was not measured on this rank")
        sample = pending.sample
        parts = [pending.grads]
        if sample is not None:
            size = len(sample.layer_ids)
            updates = torch.full((size,), NAN, dtype=torch.float64, device=self.device)
            if sample.snapshot is not None:
                torch._foreach_sub_(sample.snapshot, sample.weights)
                squares = _norms(sample.snapshot, 2.0, self.device).double() ** 2 * self._group_inverse[self._slot]
                updates = torch.zeros(size, dtype=torch.float64, device=self.device).index_add_(
                    0, sample.index, squares
                )
                sample.snapshot = None
            gathered = torch.zeros(self.world, size, dtype=torch.float64, device=self.device)
            gathered[self.rank] = sample.grad_max.double()
            parts += [sample.norms, updates, gathered.view(-1)]
        if sketched:
            if pending.sketch is None:
                raise RuntimeError("a sketch is due and this rank has none")
            rows = torch.zeros(self.world, pending.sketch.numel(), dtype=torch.float64, device=self.device)
            rows[self.rank] = pending.sketch.reshape(-1).to(self.device, torch.float64)
            parts.append(rows.view(-1))
        return torch.cat(parts)


class WatchStopped(Exception):
    """Raised on every rank after an all_reduce whose flags show that watch() failed on some rank."""

    def __init__(self, failed: list[int], rank: int, own: str | None) -> None:
        ranks = ", ".join(map(str, failed))
        cause = f": {own}" if own is not None else ""
        where = f"rank {rank}'s own error{cause}" if rank in failed else f"an internal error on rank {ranks}"
        super().__init__(f"stopped on every rank together after {where}")
        self.failed = failed


class AgreedBudget(Budget):
    """A Budget whose stride is the one all ranks agreed on in the last all_reduce (rank 0's, one step late)."""

    def __init__(self, budget: float | None, every: int, slots: int, engine: ShardedStats) -> None:
        super().__init__(budget, every, slots)
        self._engine = engine
        self._own = every
        engine.stride_source = lambda: self._own

    @property  # type: ignore[override]
    def stride(self) -> int:
        """The agreed stride (every, until the first recorded step)."""
        return self._engine.agreed_stride or self.every

    @stride.setter
    def stride(self, value: int) -> None:
        self._own = value


class SilentBuffer(RecordBuffer):
    """Ranks other than 0 under FSDP take part in every all_reduce and keep nothing."""

    def append(self, record: Record) -> None:
        return None


class SilentShipper:
    """The shipper of a rank that ships nothing: no thread, no client, no run."""

    run_id = None
    last_error = None
    pending = 0

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float) -> bool:
        return True
