"""on_finding under torch.distributed: rank 0's findings reach every rank at the same optimizer step.

Only rank 0 ships records and hears the service's findings, but an action has to act on every rank
together: `stop_training` on rank 0 alone leaves the other ranks waiting in the next gradient
all-reduce, and `lower_lr` on rank 0 alone makes the replicas' updates differ. So while on_finding is
set under torch.distributed, every rank counts optimizer steps and, at agreed check steps, joins one
all_reduce of two int64: the byte length of rank 0's new findings (JSON) and the number of steps to
the next check (rank 0's recording stride: findings can only change after records ship). A length
other than 0 is followed by one broadcast of the bytes; every rank then hands the same findings to
on_finding at the same step. With nothing to say a check costs that one 16-byte all_reduce.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from gradhealth.report import Finding

MAX_PAYLOAD = 1 << 20  # bytes of findings per check; the rest wait for the next check


def _device() -> torch.device:
    """Where the collectives' tensors live: the current CUDA device under NCCL, else the CPU (gloo)."""
    backend = str(torch.distributed.get_backend())
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def encode(findings: list[Finding], limit: int = MAX_PAYLOAD) -> tuple[bytes, list[Finding], int]:
    """A JSON array of the first findings that fit in `limit` bytes (b"" for none), those left over, and
    how many were dropped for being over `limit` on their own."""
    parts: list[bytes] = []
    size, dropped = 2, 0
    for index, finding in enumerate(findings):
        part = finding.model_dump_json().encode()
        if size + len(part) + 1 > limit:
            if parts:
                return b"[" + b",".join(parts) + b"]", findings[index:], dropped
            dropped += 1  # larger than a whole payload: it could never travel
            continue
        parts.append(part)
        size += len(part) + 1
    return (b"[" + b",".join(parts) + b"]" if parts else b""), [], dropped


def decode(payload: bytes) -> list[Finding]:
    """The findings rank 0 encoded."""
    from gradhealth.report import Finding

    return [Finding.model_validate(item) for item in json.loads(payload)]


class FindingRelay:
    """Counts optimizer steps on every rank and, at the agreed checks, hands rank 0's findings to all of them."""

    def __init__(self, rank: int, take: Callable[[], list[Finding]], gap: Callable[[], int]) -> None:
        """`take`: rank 0's new findings (other ranks: never called); `gap`: rank 0's steps to the next check."""
        self.rank = rank
        self.checks = 0  # collectives joined (one all_reduce each, plus a broadcast when findings came)
        self.dropped = 0  # rank 0: findings too large to send (over MAX_PAYLOAD on their own)
        self._take, self._gap = take, gap
        self._step = 0
        self._next_check = 0
        self._left: list[Finding] = []  # rank 0: findings over MAX_PAYLOAD, for the next check
        self._device = _device()

    def after_step(self) -> list[Finding]:
        """Call once per optimizer step on every rank: the findings to act on now (the same on every rank)."""
        step, self._step = self._step, self._step + 1
        if step < self._next_check:
            return []
        self.checks += 1
        payload = b""
        if self.rank == 0:
            payload, self._left, dropped = encode(self._left + self._take())
            self.dropped += dropped
        head = torch.zeros(2, dtype=torch.int64)
        if self.rank == 0:
            head[0], head[1] = len(payload), max(1, int(self._gap()))
        head = head.to(self._device)
        torch.distributed.all_reduce(head)  # only rank 0 contributes: the sum is its values
        length, gap = (int(value) for value in head.tolist())
        self._next_check = step + max(1, gap)
        if length == 0:
            return []
        if length > MAX_PAYLOAD:
            raise RuntimeError(f"a findings payload of {length} bytes (at most {MAX_PAYLOAD})")
        buffer = (
            torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            if self.rank == 0
            else torch.empty(length, dtype=torch.uint8)
        ).to(self._device)
        torch.distributed.broadcast(buffer, src=0)
        return decode(bytes(buffer.cpu().tolist()))


__all__ = ["MAX_PAYLOAD", "FindingRelay", "decode", "encode"]
