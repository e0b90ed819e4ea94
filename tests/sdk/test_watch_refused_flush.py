"""A refused run ends flush() at once: the refusal wakes the waiter, however long its timeout."""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from gradhealth.sdk.watching import WatchWarning, watch

import gradhealth

from .servers import Answer, FaultServer, Seen
from .test_watch_support import Net, batches

FLUSH_TIMEOUT = 60.0  # what the old wait slept out: the test fails on it, it never has to wait it out to pass


class StillRunning:
    """The shipper thread as seen by a waiter woken before the thread has returned (it only ever reports alive)."""

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread

    def is_alive(self) -> bool:
        """The window between the refusal's notify and the thread's exit, held open."""
        return True

    def join(self, timeout: float | None = None) -> None:
        """close() still waits on the real thread."""
        self.thread.join(timeout)


def test_a_refused_run_ends_a_waiting_flush_at_once() -> None:
    gate = threading.Event()  # the service answers the run creation only once flush() is waiting

    def handler(seen: Seen) -> Answer:
        gate.wait(FLUSH_TIMEOUT)
        return Answer(401, {"error": {"code": "unauthorized", "message": "bad key"}})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WatchWarning)
        with FaultServer(handler) as server:
            model = Net()
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            client = gradhealth.Client(base_url=server.url, api_key="wrong", max_retries=0)
            handle = watch(model, opt, run="t", client=client)
            for x, y in batches(2):
                F.mse_loss(model(x), y).backward()
                opt.step()
                opt.zero_grad()
            shipper: Any = handle._shipper
            shipper._thread = StillRunning(shipper._thread)
            cond = shipper.buffer.cond

            def release_once_flush_waits() -> None:
                with cond:  # flush() sets _flush and notifies, then releases the lock only inside its wait
                    cond.wait_for(lambda: shipper._flush, FLUSH_TIMEOUT)
                gate.set()

            threading.Thread(target=release_once_flush_waits, daemon=True).start()
            started = time.monotonic()
            delivered = handle.flush(timeout=FLUSH_TIMEOUT)
            waited = time.monotonic() - started
            handle.close(timeout=FLUSH_TIMEOUT)
    assert gate.is_set() and shipper._abandoned  # the refusal came while flush() was waiting
    assert delivered is False and shipper.failed_attempts == 0  # a refusal is not a failed attempt ...
    assert waited < FLUSH_TIMEOUT  # ... yet it ended the wait, not the timeout
    assert [s.path for s in server.seen] == ["/v1/runs"]
