"""The handle watch() returns: optimizer and forward hooks that record steps, and loss bookkeeping.

Hooks run on the training thread and only enqueue device work plus one async device-to-host copy
per recorded step; everything touching the network happens in the background thread (_shipper).
Every hook body is guarded: an internal error stops watching with one warning, never the training.
Every hook body is also timed: the overhead budget (_budget) sets which steps are recorded.
"""

from __future__ import annotations

import atexit
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from gradhealth.report import Finding
from gradhealth.report.schema import SEVERITY_ORDER
from torch import Tensor, nn

from ._budget import Budget, usable
from ._extras import Extras
from ._layers import Layer
from ._losses import LossLedger
from ._records import HostArray, LossValue, Record, RecordBuffer
from ._relay import FindingRelay
from ._shipper import Shipper
from ._sketch import SketchSchedule
from ._stats import Pending, StatsEngine
from .distributed import AgreedBudget, ShardedStats, SilentBuffer, SilentShipper, WatchStopped, is_sharded

if TYPE_CHECKING:
    from ..report import Report

FINDINGS_WAIT = 10.0  # seconds a step may wait for the previous batch's answer while on_finding is set


class WatchWarning(RuntimeWarning):
    """Something went wrong in watch(); training carries on."""


class Watch:
    """A watched training loop; see gradhealth.watch()."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        layers: list[Layer],
        every: int,
        param_every: int,
        budget: float | None,
        scaler: Any,
        max_buffered_steps: int,
        flush_interval: float,
        batch_steps: int,
        rank: int,
        client: Callable[[], Any] | None,
        create_run: Callable[[Any], str],
        world: int = 1,
        extras: Extras | None = None,
    ) -> None:
        """`client` is a factory for the service client; None: a rank other than 0, a no-op handle (DDP)
        or, with sharded parameters (FSDP2), one that measures its shards and ships nothing."""
        self.every = every
        self.param_every = param_every
        self.rank = rank
        self.world = world
        self.layers = layers
        self.steps_recorded = 0
        self.skipped_steps = 0
        self._optimizer = optimizer
        self._scaler = scaler
        self._step = 0  # the next step's number: optimizer steps taken (+ steps the scaler skipped)
        self._losses = LossLedger()
        self._pending: Pending | None = None
        self._last_recorded: int | None = None
        self._spent = 0.0  # seconds spent in watch() since the last step ended
        self._ended = False  # a step just ended; _account() hands its cost to the budget
        self._ended_slot: int | None = None  # that step's sample slot, None when it was not recorded
        self._stepped = False
        self._paused = False  # pause(): steps are counted, none recorded
        self._hooks: list[Any] | None = []
        self._warned: set[str] = set()
        self.active = client is not None
        self._closed = not self.active
        self._lock = threading.Lock()
        self.model, self.optimizer = model, optimizer
        self.lr_schedulers: list[Any] = []  # schedulers whose base_lrs lower_lr() scales too (integrations fill it)
        self.stop_hook: Callable[[Finding], None] | None = None  # integrations: set the framework's stop flag
        self.checkpoint_hook: Callable[[str], None] | None = None  # integrations: the framework's own checkpoint
        self._on_finding: Callable[[Finding, Watch], None] | None = None
        self._relay: FindingRelay | None = None  # torch.distributed: findings reach every rank at the same step
        self._manual_pre_step = False
        self._sharded: ShardedStats | None = None  # FSDP2: every rank takes part in each recorded step's all_reduce
        self._collect = False  # this step is recorded on every rank: its post-step hook joins the all_reduce
        self._sketched = False  # ... and carries the shard summaries of a sketch
        sharded = world > 1 and is_sharded(layers)
        self._extras = extras or Extras(layers, SketchSchedule(False, None), None)
        if client is None and not sharded:
            self._budget = Budget(None, every, 1)
            return
        self._closed = False
        if sharded:
            self._sharded = ShardedStats(layers, param_every, rank, world)
            self._stats: StatsEngine = self._sharded
            self._budget = AgreedBudget(budget, every, self._stats.slots, self._sharded)
            self._extras.shard(rank)
            schedule = self._extras.sketches
            self._sharded.sketch_source = lambda: schedule.offer(self._budget.step_time)
        else:
            self._stats = StatsEngine(layers, param_every)
            self._budget = Budget(budget, every, self._stats.slots)
        self._extras.bind(lambda: self._step, self._records)
        self._buffer = (SilentBuffer if client is None else RecordBuffer)(
            max_buffered_steps, batch_steps, self._on_first_drop
        )
        if optimizer is not None:
            self._hooks.append(optimizer.register_step_pre_hook(self._guard(self._optimizer_pre_step)))
            self._hooks.append(optimizer.register_step_post_hook(self._guard(self._post_step)))
            self._hooks.append(optimizer.register_step_post_hook(lambda *args: self._act()))
        forward_hook = self._guard(self._forward)
        if getattr(model, "_compiled_call_impl", None) is not None:  # module.compile(): keep the hook out of the graph
            forward_hook = torch.compiler.disable(forward_hook)
        self._hooks.append(model.register_forward_hook(forward_hook))
        if scaler is not None and optimizer is not None:
            original_step = scaler.step
            scaler.step = lambda opt, *a, **k: self._scaler_step(original_step, opt, *a, **k)
        if client is None:
            self._shipper: Shipper | SilentShipper = SilentShipper()
            return
        self._shipper = Shipper(
            self._buffer, client, create_run, len(layers), flush_interval, batch_steps, self._on_problem
        )
        atexit.register(self._at_exit)

    # ---- public API -------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The service's id for this run, once the background thread has created it."""
        return self._shipper.run_id if self.active else None

    @property
    def dropped(self) -> int:
        """Recorded steps that never reached the service (buffer full, refused, or undelivered at close)."""
        return self._buffer.dropped if self.active else 0

    @property
    def buffered(self) -> int:
        """Recorded steps waiting in memory for the background thread."""
        return len(self._buffer) if self.active else 0

    @property
    def stride(self) -> int:
        """The recording interval in optimizer steps now: `every`, or a multiple of it while over the budget."""
        return self._budget.stride

    @property
    def sketch_stride(self) -> int | None:
        """Optimizer steps between distribution sketches now (None: none, or not chosen yet: see docs/runs.md)."""
        schedule = self._extras.sketches
        if not schedule.enabled:
            return None
        chosen = schedule.agreed if schedule.agreed is not None and schedule.fixed is None else schedule.fixed
        if chosen is None:
            chosen = schedule.offer(self._budget.step_time)
        return chosen or None

    @property
    def overhead(self) -> float | None:
        """watch()'s measured cost at the current stride, as a fraction of the step time without it.

        Host time on the training thread (on CUDA the kernels' device time is not included);
        None for the first steps, before there is a measurement.
        """
        return self._budget.overhead

    def log(self, loss: LossValue | None = None, step: int | None = None) -> None:
        """Attach a loss (a tensor is kept and read later: no device sync) to a step.

        Without `step`: a loss logged after optimizer.step() and before the next forward belongs to
        the step just taken (unless that step has one already); otherwise to the coming step.
        Several losses for one step (micro-batches) are averaged.
        """
        if self._closed or loss is None:
            return
        start = time.perf_counter()
        try:
            self._losses.log(loss, step, self._step, self._due(self._step))
        except Exception as exc:
            self._fail(exc)
        finally:
            self._account(start)

    def step(self) -> None:
        """Mark a step when watch() has no optimizer: call after backward(), before zero_grad()."""
        if self._optimizer is not None:
            if not self._closed:
                self._warn("step", "watch.step() is ignored: steps are taken from the optimizer given to watch()")
            return
        if not self._closed:
            self._guard(self._pre_step)(None, (), {})
            self._guard(self._post_step)(None, (), {})
            self._act()
        self._relay_step()  # every rank, inert ones included: the checks are collectives

    def before_step(self) -> None:
        """Read the gradients now, not in the optimizer's pre-step hook: for frameworks whose optimizer.step()
        runs forward and backward itself (a closure, as in Lightning), where that hook fires before backward."""
        if self._closed or self._optimizer is None:
            return
        self._manual_pre_step = True
        self._guard(self._pre_step)(self._optimizer, (), {})

    def pause(self) -> None:
        """Record no step from the next one on until resume(): the hooks stay and keep counting steps, so the
        numbers go on following the optimizer's (a phase not worth watching, or an A/B of watch()'s own cost).

        Under torch.distributed call it on every rank between the same two steps: FSDP2 ranks record together.
        """
        self._paused = True

    def resume(self) -> None:
        """Record again from the next step on: the first one due (a multiple of `every`, `stride` after the last recorded)."""
        self._paused = False

    @property
    def paused(self) -> bool:
        """Whether recording is paused (pause())."""
        return self._paused

    @property
    def sharded(self) -> bool:
        """Whether the watched parameters are sharded over ranks (FSDP2): each rank holds part of every one."""
        return self._sharded is not None

    @property
    def steps_taken(self) -> int:
        """Optimizer steps taken so far (with the steps GradScaler skipped): the next step's number."""
        return self._step

    def on_finding(self, callback: Callable[[Finding, Watch], None], severity: str = "error") -> None:
        """Call `callback(finding, watch)` once per new finding at or above `severity` that the service reports.

        The background thread asks for the run's findings after each delivered batch whose answer shows the
        run at that severity; the callback runs on the training thread right after the next optimizer step
        (it may raise gradhealth.StopTraining out of optimizer.step()). While a callback is set, a batch is not
        handed over before the previous one's answer is in (waiting at most FINDINGS_WAIT seconds), so a
        finding is acted on within one shipping interval (flush_interval, or batch_steps records) of the batch
        that shows it. Findings in the answer to the batches close() ships are handed over in close().
        Under torch.distributed (call it on every rank) the callback runs on every rank with the same findings
        after the same optimizer step (_relay), and close() hands nothing over: rank 0 alone would act.
        See gradhealth.actions for ready-made callbacks.
        """
        if severity not in SEVERITY_ORDER:
            raise ValueError(f"severity is one of {list(SEVERITY_ORDER)}; got {severity!r}")
        self._on_finding = callback
        if self.active and isinstance(self._shipper, Shipper):
            self._shipper.poll_findings(severity)
        if self.world > 1 and self._relay is None and self._hooks is not None:
            self._relay = FindingRelay(self.rank, self._take_findings, lambda: self._budget.stride)
            if self._optimizer is not None:
                self._hooks.append(self._optimizer.register_step_post_hook(lambda *args: self._relay_step()))

    def flush(self, timeout: float = 30.0) -> bool:
        """Send everything recorded so far; True when the service has it all within `timeout` seconds."""
        if not self.active:
            return True
        self._seal()
        return self._shipper.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop watching and deliver what is left, waiting at most `timeout` seconds.

        With on_finding set, the findings the service reports for the last batches are handed to it here,
        after everything else (a StopTraining raised by the callback then leaves close(), and the with block).
        """
        if self._hooks is None:
            return
        if self._sharded is not None and self._sharded.failure is not None and not self._closed:
            self._warn("error", f"gradhealth.watch failed on this rank ({self._sharded.failure}); no step flagged it")
        self._closed = True
        self._unhook()
        self._extras.close()
        if not self.active:
            return
        self._seal()
        atexit.unregister(self._at_exit)
        if not self._shipper.close(timeout) and self._shipper.pending:
            left = self._shipper.pending
            self._buffer.dropped += left
            if not self._warned - {"throttle"}:  # a problem already reported (service down, refused) explains this
                reason = self._shipper.last_error or "no answer in time"
                self._warn("delivery", f"gradhealth.watch: {left} recorded steps were not delivered ({reason})")
        if self._relay is None:
            self._hand_over()  # the answer to the last batch may hold findings: on_finding still sees them

    def report(self, timeout: float = 30.0) -> Report:
        """The service's diagnosis of this run so far (flushes first; a service that is down fails it at once)."""
        if not self.active:
            raise RuntimeError(f"watch() records on rank 0 only; this is rank {self.rank}")
        self.flush(timeout)
        if self._shipper.run_id is None:
            raise RuntimeError(f"the run is not on the service yet: {self._shipper.last_error or 'not created'}")
        return self._shipper.client().runs.report(self._shipper.run_id)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # an exception is on its way out (StopTraining among them): on_finding at close must not replace it
            self.close()
        except Exception as exc:
            from gradhealth.actions import StopTraining

            if not isinstance(exc, StopTraining):
                self._warn("close", f"gradhealth.watch: on_finding raised at close ({exc!r}) while the block raised")

    def __repr__(self) -> str:
        return (
            f"Watch(run_id={self.run_id!r}, steps_recorded={self.steps_recorded}, stride={self.stride}, "
            f"dropped={self.dropped})"
        )

    # ---- hooks ------------------------------------------------------------------------------

    def _records(self, step: int) -> bool:
        """Whether optimizer step `step` is recorded: due, and recording not paused."""
        return not self._paused and self._due(step)

    def _due(self, step: int) -> bool:
        """Whether step `step` is due: a multiple of `every`, `stride` steps after the last recorded one (its losses
        are kept while paused, so a resume() between a step's loss and its optimizer.step() records both)."""
        if step % self.every:
            return False
        return self._last_recorded is None or step - self._last_recorded >= self._budget.stride

    def _optimizer_pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._manual_pre_step:  # else before_step() has read the gradients already
            self._pre_step(optimizer, args, kwargs)

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._pending, self._collect = None, False  # a step GradScaler skipped left them set
        if not self._records(self._step):
            return
        if self._sharded is not None:  # decided before anything can fail: the all_reduce's shape depends on it
            self._collect = True
            self._extras.sketches.agreed = self._sharded.agreed_sketch  # rank 0's offer, as of the last all_reduce
            self._sketched = self._extras.sketches.due(self._step, self._budget.step_time)
        with torch.no_grad():
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else None
            grad_scale = getattr(optimizer, "grad_scale", None)
            grads = self._stats.grads(grad_scale)
            sample = self._stats.sample(self.steps_recorded, optimizer is not None, grad_scale)
            sketch = self._extras.sketch(self._step, self._budget.step_time, self._budget.overhead)
            self._spent -= self._extras.sketch_seconds  # not recording's cost: sketches take what recording leaves
            if lr is not None and not (isinstance(lr, Tensor) and not lr.is_cpu):
                lr = float(lr)  # a CPU tensor lr is read now: copying it to the device would sync the stream
            self._pending = Pending(grads, sample, lr, sketch)

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._stepped = True
        pending, self._pending = self._pending, None
        collect, self._collect = self._collect, False
        record = None
        try:  # the step is counted whatever fails: under FSDP every rank must agree on the steps recorded
            if pending is not None or collect:
                record = self._finish(pending)
            else:
                self._extras.attach(None, None, torch.device("cpu"))
        finally:
            self._complete(record, recorded=pending is not None or collect)

    def _finish(self, pending: Pending | None) -> Record:
        """The recorded step's record (under FSDP after the all_reduce, which runs even if this rank failed)."""
        sketch = pending.sketch if pending is not None else None
        with torch.no_grad():
            if self._sharded is not None:
                values = self._sharded.collect(pending, self.steps_recorded, self._sketched)
                gathered = self._sharded.take_gathered()
                sketch = None
                if gathered is not None:
                    sketch = self._extras.merge(gathered, self._budget.step_time, self._budget.overhead)
                    self._spent -= self._extras.sketch_seconds
            else:
                assert pending is not None
                values = self._stats.finish(pending)
        assert pending is not None  # collect() raised if any rank failed
        lr, stride = pending.lr, self._budget.stride
        if isinstance(lr, Tensor):
            record = Record(self._step, HostArray(values), None, lr_in_values=True, stride=stride)
        else:
            record = Record(self._step, HostArray(values), lr, stride=stride)
        self._extras.attach(record, sketch, self._stats.device)
        return record

    def _complete(self, record: Record | None, recorded: bool = False) -> None:
        """A step finished (or was skipped): the previous record is sealed, this one takes its losses.

        `recorded`: the step was recorded though its record was lost to an error (the schedule counts it).
        """
        self._seal()
        self._ended, self._ended_slot = True, None
        self._losses.step_ended(record)
        if record is not None or recorded:
            self._ended_slot = self.steps_recorded  # the sample group it measured (see StatsEngine.sample)
            self._last_recorded = self._step
            self.steps_recorded += 1
        self._step += 1

    def _forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():
            return  # evaluation: neither a training step's forward nor its loss
        self._losses.forward(output, self._due(self._step))

    def _scaler_step(self, original: Callable[..., Any], optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        """GradScaler.step: a step it skips for inf/NaN grads never reaches the optimizer hooks; count it."""
        self._stepped = False
        result = original(optimizer, *args, **kwargs)
        if not self._stepped and optimizer is self._optimizer and not self._closed:
            start = time.perf_counter()
            try:
                self.skipped_steps += 1
                self._losses.discard_upcoming()
                self._complete(None)
            except Exception as exc:
                self._fail(exc)
            self._account(start)
            self._act()
        return result

    # ---- plumbing ---------------------------------------------------------------------------

    def _seal(self) -> None:
        """The last step's record is complete (its late loss can no longer come): to the buffer."""
        record = self._losses.seal()
        if record is not None:
            self._buffer.append(record)

    def _guard(self, hook: Callable[..., None]) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            if self._closed:
                return
            start = time.perf_counter()
            try:
                hook(*args)
            except Exception as exc:
                self._fail(exc)
            self._account(start)

        return guarded

    def _account(self, start: float) -> None:
        """Charge the time since `start` to watch(); when a step just ended, hand its total to the budget."""
        now = time.perf_counter()
        self._spent += now - start
        if not self._ended:
            return
        self._ended = False
        try:
            if isinstance(self._shipper, Shipper) and self._ended_slot is not None:
                self._budget.shipping = self._shipper.cpu_per_record()
            self._budget.step(now, self._spent, self._ended_slot)
            if self._budget.throttled and "throttle" not in self._warned:
                self._warn_throttled()
        except Exception as exc:
            self._fail(exc)
        self._spent = time.perf_counter() - now  # this bookkeeping is charged to the next step

    def _warn_throttled(self) -> None:
        budget = self._budget
        forced = "every step" if self.every == 1 else f"one step in {self.every}"
        self._warn(
            "throttle",
            f"gradhealth.watch: recording cost {budget.ratio(self.every):.1%} of the step time "
            f"({budget.cost * 1e3:.2f} ms per recorded step, {budget.step_time * 1e3:.1f} ms per step without it), "
            f"over the {usable(budget.budget) * 100:.3g}% that budget={budget.budget * 100:g}% leaves to what watch() times "
            f"(a third is kept for costs it cannot time): recording one step in {budget.stride} from now on (watch.stride follows "
            f"the measured cost; steps keep their numbers). watch(..., budget=None) records {forced}.",
        )

    def _fail(self, exc: Exception) -> None:
        """An internal error: stop recording (what is buffered still ships), warn once, never raise.

        Hooks are not removed here (this may run inside the optimizer's hook loop); they are inert
        from now on and close() removes them. Under FSDP a rank stops only with all the others: its
        error is flagged in the next recorded step's all_reduce, after which every rank raises
        WatchStopped and stops (no rank is left waiting in a collective the failed one skips).
        """
        if self._sharded is not None and not isinstance(exc, WatchStopped):
            self._sharded.failure = self._sharded.failure or repr(exc)
            return
        self._closed = True
        if isinstance(exc, WatchStopped):
            self._warn("error", f"gradhealth.watch {exc}; training goes on")
            return
        self._warn("error", f"gradhealth.watch stopped recording after an internal error ({exc!r}); training goes on")

    def _act(self) -> None:
        """After a step, on the training thread: keep within one batch of the findings, hand new ones to on_finding."""
        if self._on_finding is None or self._closed or not isinstance(self._shipper, Shipper):
            return
        if self._shipper.behind():  # the wait is watch()'s cost on the training thread: the next step is charged
            start = time.perf_counter()
            try:
                self._shipper.await_answer(FINDINGS_WAIT)
            finally:
                self._spent += time.perf_counter() - start
        if self._relay is None:  # else _relay_step hands them over, on every rank at once
            self._hand_over()  # on_finding's own time is the user's, not watch()'s

    def _relay_step(self) -> None:
        """Every rank, after each optimizer step while on_finding is set under torch.distributed: act together."""
        relay, callback = self._relay, self._on_finding
        if relay is None or callback is None or self._hooks is None:
            return
        start = time.perf_counter()
        try:
            found = relay.after_step()
        except Exception as exc:  # a broken process group: training itself will say so; stop relaying
            self._relay = None
            self._warn("relay", f"gradhealth.watch: on_finding stops on rank {self.rank} ({exc!r})")
            return
        finally:
            self._spent += time.perf_counter() - start  # watch()'s cost, charged to the next step
        for finding in found:  # the user's code, on every rank: its exceptions (StopTraining) are theirs
            callback(finding, self)

    def _take_findings(self) -> list[Finding]:
        """Rank 0's new findings for the relay (none once shipping has stopped or failed)."""
        if not isinstance(self._shipper, Shipper):
            return []
        try:
            return self._shipper.take_findings()
        except Exception as exc:  # the relay's collective must go ahead on every rank whatever happens here
            self._warn("relay", f"gradhealth.watch: findings not relayed ({exc!r})")
            return []

    def _hand_over(self) -> None:
        """New findings to on_finding, each once; the user's code: its exceptions (StopTraining) are theirs to see."""
        if self._on_finding is None or not isinstance(self._shipper, Shipper):
            return
        for finding in self._shipper.take_findings():
            self._on_finding(finding, self)

    def _unhook(self) -> None:
        for handle in self._hooks or ():
            handle.remove()
        self._hooks = None
        if self._scaler is not None and "step" in vars(self._scaler):
            del self._scaler.step

    def _on_first_drop(self) -> None:
        reason = self._shipper.last_error or "the service is slow"
        self._warn(
            "delivery",
            f"gradhealth.watch: {self._buffer.capacity} recorded steps are waiting ({reason}); "
            "dropping the oldest from now on (counted in watch.dropped and reported to the service)",
        )

    def _on_problem(self, kind: str, message: str) -> None:
        if kind == "fatal" and self._sharded is not None:  # the other ranks stop with this one (see _fail)
            self._sharded.failure = self._sharded.failure or message
        elif kind == "fatal":
            self._closed = True  # hooks go inert; close() removes them
        self._warn(kind, f"gradhealth.watch: {message}")

    def _warn(self, kind: str, message: str) -> None:
        with self._lock:
            if kind in self._warned:
                return
            self._warned.add(kind)
        warnings.warn(message, WatchWarning, stacklevel=3)

    def _at_exit(self) -> None:
        try:
            self.close(timeout=5.0)
        except Exception as exc:  # on_finding raised at close, with the interpreter going down: say so, once
            self._warn("at_exit", f"gradhealth.watch: on_finding raised at exit ({exc!r})")
