"""The background thread: creates the run, packs batches and POSTs them, so training never waits on the network.

A batch that fails is retried with backoff under the same `seq` (the service dedupes by run and
seq); while the service is away records pile up in the bounded buffer, oldest dropped first.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gradhealth.report import severity_at_least
from gradhealth.report.schema import SEVERITY_ORDER

from .._constants import RETRY_STATUSES
from ._encode import pack_batch
from ._records import RecordBuffer

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
CPU_WINDOW = 8  # batches over which the shipping thread's CPU time per record is averaged
CreateRun = Callable[[Any], str]


class Fatal(Exception):
    """The service refused in a way that retrying cannot fix (bad key, unknown run, invalid layers)."""


def _refused(exc: BaseException) -> bool:
    """A 4xx answer other than the retryable ones (408/409/429)."""
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in RETRY_STATUSES


class Shipper:
    """Owns the client, the run id and the seq counter; runs in one daemon thread."""

    def __init__(
        self,
        buffer: RecordBuffer,
        client: Callable[[], Any],
        create_run: CreateRun,
        num_layers: int,
        flush_interval: float,
        batch_steps: int,
        on_problem: Callable[[str, str], None],
    ) -> None:
        self.buffer = buffer
        self.run_id: str | None = None
        self.delivered = 0
        self.last_error: str | None = None
        self.failed_attempts = 0  # delivery attempts that failed (service down, 5xx, timeout)
        self.client = client
        self._create_run = create_run
        self._num_layers = num_layers
        self._interval = flush_interval
        self._batch_steps = batch_steps
        self._on_problem = on_problem
        self._seq = 0
        self._inflight: tuple[int, bytes, int, int] | None = None  # seq, body, records, dropped reported
        self._flush = False
        self._closing = False
        self._abandoned = False
        self._kicks = 0
        self._floor: str | None = None  # on_finding's severity: poll the run's findings at or above it
        self._found: list[Any] = []  # new findings for the training thread
        self._seen: set[tuple[str, int | None]] = set()
        self._since = time.monotonic()  # when the last unit of work ended
        self._failing = False
        self._lagging = False  # a wait for an answer timed out: do not wait again until one comes
        self._cpu: deque[tuple[float, int]] = deque(maxlen=CPU_WINDOW)  # (thread CPU s, records) per batch sent
        self._sent = 0  # records in the batch in flight
        self._retries_cpu = 0.0  # CPU seconds of its failed attempts so far
        self._thread = threading.Thread(target=self._main, name="gradhealth-watch", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Records not yet acknowledged by the service (buffered plus the batch in flight)."""
        with self.buffer.cond:
            return len(self.buffer) + (self._inflight[2] if self._inflight else 0)

    def flush(self, timeout: float) -> bool:
        """Send now; wait until everything buffered is acknowledged (True), or `timeout` passes, an attempt
        made for this flush fails or the run is abandoned (False): a service that is down or refuses answers
        at once, not in `timeout`."""
        with self.buffer.cond:
            self._flush = True
            failed_before = self.failed_attempts
            self._kick()
            self.buffer.cond.wait_for(lambda: self._settled(failed_before), timeout)
            return self._delivered_all()

    def cpu_per_record(self) -> float:
        """CPU seconds this thread spent per record over the last batches (encoding, HTTP, findings): 0 before one.

        Shipping shares the training process's CPU (and GIL), so the overhead budget counts it (_budget).
        """
        window = list(self._cpu)
        records = sum(count for _, count in window)
        return sum(cpu for cpu, _ in window) / records if records else 0.0

    def poll_findings(self, severity: str) -> None:
        """Ask for the run's findings at or above `severity` after each batch whose answer shows the run there."""
        self._floor = severity

    def take_findings(self) -> list[Any]:
        """The findings fetched since the last call (each (rule, step) once)."""
        if not self._found:
            return []
        with self.buffer.cond:
            found, self._found = self._found, []
        return found

    def behind(self) -> bool:
        """Whether the next batch is due while the previous one's answer is still out (a healthy service: never)."""
        if self._inflight is None or self._failing or self._lagging or self._abandoned:
            return False
        waiting = len(self.buffer)
        return waiting >= self._batch_steps or (waiting > 0 and time.monotonic() - self._since >= self._interval)

    def await_answer(self, timeout: float) -> None:
        """Wait for the batch in flight to be answered (and its findings fetched), an attempt to fail, or `timeout`."""
        with self.buffer.cond:
            failed_before = self.failed_attempts
            answered = self.buffer.cond.wait_for(
                lambda: self._inflight is None or self.failed_attempts > failed_before or self._abandoned, timeout
            )
            self._lagging = not answered

    def _poll(self, client: Any, ack: Any) -> None:
        """After a delivered batch: the run's new findings at or above the floor, when its health says there are some."""
        health = ack.get("health") if isinstance(ack, dict) else None
        if self._floor is None or health not in SEVERITY_ORDER or not severity_at_least(health, self._floor):
            return
        new = []
        for finding in client.runs.findings(self.run_id, self._floor):
            key = (finding.rule, finding.step)
            if key not in self._seen:
                self._seen.add(key)
                new.append(finding)
        if new:
            with self.buffer.cond:
                self._found.extend(new)

    def _settled(self, failed_before: int) -> bool:
        """Whether a flush has its answer: all delivered, an attempt failed, or nothing more will be sent.

        `_abandoned` is set (and waiters notified) while the thread is still alive: without it a waiter woken
        by a refusal would find the thread running and sleep out its whole timeout.
        """
        if self._delivered_all() or self.failed_attempts > failed_before:
            return True
        return self._abandoned or not self._thread.is_alive()

    def close(self, timeout: float) -> bool:
        """Deliver what is left within `timeout`; after that the thread gives up at its next chance."""
        with self.buffer.cond:
            self._closing = True
            self._kick()
        self._thread.join(max(0.0, timeout))
        with self.buffer.cond:
            self._abandoned = True
            self.buffer.cond.notify_all()
        return self._delivered_all()

    def _delivered_all(self) -> bool:
        return self.run_id is not None and self.pending == 0

    def _kick(self) -> None:
        self._kicks += 1
        self.buffer.cond.notify_all()

    def _ready(self, since: float) -> bool:
        """Whether there is work now: a run to create, a batch to retry, or enough (or old enough) records."""
        if self._abandoned or self.run_id is None or self._inflight is not None:
            return True
        waiting = len(self.buffer)
        if not waiting:
            return self._closing
        return (
            waiting >= self._batch_steps or self._flush or self._closing or time.monotonic() - since >= self._interval
        )

    def _main(self) -> None:
        failures, since = 0, time.monotonic()
        while True:
            with self.buffer.cond:
                self.buffer.cond.wait_for(lambda since=since: self._ready(since), self._interval)
                if self._abandoned or (self._closing and self.pending == 0):
                    return
                if not self._ready(since):
                    continue
                kicks = self._kicks
            try:
                self._work()
                failures, since = 0, time.monotonic()
                self._since, self._failing = since, False
            except Fatal as exc:
                self._on_problem("fatal", str(exc))
                with self.buffer.cond:
                    self._abandoned = True
                    self.buffer.cond.notify_all()
                return
            except Exception as exc:  # connection errors, 5xx, timeouts: try again later
                failures += 1
                with self.buffer.cond:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self.failed_attempts += 1
                    self._failing = True
                    self.buffer.cond.notify_all()
                delay = min(MAX_BACKOFF, INITIAL_BACKOFF * 2 ** (failures - 1)) * (1 - 0.25 * random.random())
                with self.buffer.cond:  # a flush() or close() cuts the wait short
                    self.buffer.cond.wait_for(lambda kicks=kicks: self._abandoned or self._kicks != kicks, delay)

    def _work(self) -> None:
        """One unit of work: create the run, or send (or re-send) one batch."""
        client = self.client()
        if self.run_id is None:
            try:
                run_id = self._create_run(client)
            except Exception as exc:
                if _refused(exc):
                    raise Fatal(f"the service refused the run: {exc}") from exc
                raise
            with self.buffer.cond:
                self.run_id = run_id
                self.buffer.cond.notify_all()
            return
        start = time.thread_time()
        try:
            self._send(client)
        finally:
            if self._inflight is None and self._sent:  # a batch was answered (delivered or refused): its CPU time
                self._cpu.append((time.thread_time() - start + self._retries_cpu, self._sent))
                self._sent, self._retries_cpu = 0, 0.0
            else:
                self._retries_cpu += time.thread_time() - start  # failed attempts count with the batch

    def _send(self, client: Any) -> None:
        """Pack the next batch (unless one is in flight) and POST it, then poll findings if due."""
        if self._inflight is None:
            records, dropped = self.buffer.take(self._batch_steps)
            if not records:
                with self.buffer.cond:
                    self._flush = False
                    self.buffer.cond.notify_all()
                return
            try:
                body = pack_batch(self._seq, records, self._num_layers, dropped)
            except Exception as exc:  # a bug, not the network: retrying would only repeat it
                raise Fatal(f"could not encode a log batch ({exc!r})") from exc
            with self.buffer.cond:
                self._inflight = (self._seq, body, len(records), dropped)
            self._seq += 1
            self._sent = len(records)
        seq, body, count, dropped = self._inflight
        try:
            ack = client.runs.append(self.run_id, body)
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if status == 404:
                raise Fatal(f"run {self.run_id} is gone from the service: {exc}") from exc
            if not _refused(exc):
                raise
            self.buffer.lost(count, dropped)
            self._on_problem("rejected", f"the service refused log batch {seq} ({count} steps): {exc}")
            count, ack = 0, None
        try:
            self._poll(client, ack)
        except Exception as exc:  # the batch is delivered; the next answer polls again
            self._on_problem("findings", f"could not read the run's findings: {exc}")
        with self.buffer.cond:
            self._inflight = None
            self._lagging = False
            self.delivered += count
            if not len(self.buffer):
                self._flush = False
            self.buffer.cond.notify_all()
