"""Step-time overhead of gradhealth's framework callbacks: a Lightning fit and a Hugging Face `Trainer.train()`.

Up to three tables, one row per model of benchmarks/watch_overhead.py and framework.

The one-fit table (`--within`, first): one fit with `GradHealthCallback` (default settings), whose recording
is paused (`Watch.pause()`: the hooks stay and count steps) in alternate rounds, ABBA, each round a whole
number of the strides in force at its start (benchmarks/_alternation.py), so a recording round records what
the stride records in steady state. After each recording round the handle is flushed outside the timer and its
shipping thread's CPU time charged to the round. "recording" is the recording rounds' added time (total-time
ratio, rounds resampled); the hooks' cost on unrecorded steps, present in both kinds of round, is the
handle's own measure ("idle", microseconds per step), added to give "total", the verdict's number. One model
instance in one arena: the two causes of bias that the pairs table below needed `--control` to find cannot
arise, and the interval is the rounds' noise alone. Left out: what a paused watch still costs beyond its
hooks (memory it holds, an idle thread), which the pairs table includes, and the attached table measures.

The attached table (`--attached N`, off by default: its lead-ins make it slow): one fit in which a paused watch is
attached in alternate rounds and none in the others, ABBA (`Attachment` in benchmarks/_alternation.py). An attached
round opens a fresh watch through the callback's own set-up (default settings), lets it record through `--lead`
untimed steps (its stride settles, its buffers and first distribution sketch are allocated, it ships), flushes and
pauses it, then times `--attached-seconds` of steps; a detached round closes it (hooks removed, thread ended) and
waits as many untimed steps. "paused watch" is everything an attached watch costs when it does not record: its
hooks, the memory it holds, its idle shipping thread. With both one-fit tables, "recording + a paused watch" is the
whole cost on one model instance. The lead must outlast a fresh watch's start: with 30 steps its first sketch
(about 0.7 s on the MLP) fell in the timed round, which then read +80% against +2% for the next round of the same
watch.

The pairs table: for each model and framework, two fits run side by side in two
threads that take turns (a baton handed over at batch starts, so only one trains at a time): the
plain fit and the fit with `GradHealthCallback` (default settings: every=1 under the 3% budget,
shipping to a real local `gradhealth serve` in its own process). After `--warmup` steps each (the
budget settles its stride within ~25), paired rounds of `--steps` steps each (default: about
`--round-seconds` of the plain fit), in ABBA order; a round is the wall time from one batch start to
the batch start `--steps` later (the framework's own work, the callbacks and the data loader
included). At each hand-over the callback's handle is flushed outside the timer and its shipping
thread's CPU time is charged to its round (as in watch_overhead.py). "stride" is the callback's
recording interval at the end. The same fixed batch is fed at every step; torch runs on one thread.

Each row runs `--pairs` such pairs of fits, with fresh models, and shares `--rounds` among them: two
fresh instances of one model can differ in speed for their whole life (why was not separated), which
one pair cannot tell from the callback's cost. The overhead is the total-time ratio over all pairs with a 95%
bootstrap interval that resamples pairs, then rounds (benchmarks/_paired.py); PASS when the point
estimate is within 3%. Each pair's own estimate is printed after the verdict.

`--control` adds an A/A row per case (both fits plain): the benchmark's own bias. Measured with one
pair per row, it found two causes. With glibc's default arena per thread, each fit allocated from its
own arena, and CNN A/A rows read -4.0% [-5.8, -2.4] and +5.2% [+3.3, +7.2] (the CNN callback rows
swung from -12% to +9% between runs). So the fits now share one arena (mallopt M_ARENA_MAX=1 before
they start; a training job has one training thread, hence one arena, too). With one arena, A/A rows
read -1.0% to +0.3%, except for one CNN row at +2.9% [+0.3, +6.0]: fresh instances still differ,
hence the pairs. The fits set themselves up one after the other (two Trainers built at once race on
accelerate's shared state: "'AcceleratorState' object has no attribute 'parallelism_config'").

Budget (DESIGN.md §6): watch() through each callback adds <= 3% step time at default settings.

    python benchmarks/watch_callbacks.py [--within 96] [--attached 0] [--lead 60] [--attached-seconds 2]
                                         [--rounds 24] [--pairs 4] [--round-seconds 0.6] [--steps N]
                                         [--warmup 40] [--models cnn,mlp,transformer] [--frameworks lightning,hf]
                                         [--control]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import io
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from gradhealth.sdk.watching import WatchWarning
from torch import nn

import gradhealth

sys.path.insert(0, str(Path(__file__).parent))
from _alternation import Alternation, Attachment, AttachmentControl  # noqa: E402
from _paired import Estimate, paired  # noqa: E402
from service import embedded  # noqa: E402
from watch_overhead import BUDGET, CASES, Case, load  # noqa: E402


class _Repeat(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """One fixed batch, sample by sample, `n` times over."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
        self.x, self.y, self.n = x, y, n

    def __len__(self) -> int:
        return self.n * len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i % len(self.x)], "labels": self.y[i % len(self.x)]}


def _case_data(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = case.batch(torch.Generator().manual_seed(1))
    if y.shape[0] != x.shape[0]:  # the language model: targets are per token
        y = y.view(x.shape[0], -1)
    return x, y


class _Wrapped(nn.Module):
    """The case's model with the Trainer's convention: forward(x, labels) -> {"loss"}."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(self.model(x), labels.flatten())}


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
STEADY_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it on 64-bit
STEADY_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: about 2 GiB, more than any fit here frees at the top


def configure_malloc(steady: bool) -> None:
    """All threads allocate from one glibc arena, as a one-thread training loop does (see the module docstring).

    `steady`: fixed thresholds, so neither rises nor trims as blocks come and go: glibc's dynamic mmap threshold and
    heap trimming otherwise make a fit's speed depend on what was freed before (a watch's buffers, say).
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name is not None else None
    if libc is None or not hasattr(libc, "mallopt"):
        print("note: not glibc; the two fits keep their own allocator state")
        return
    if libc.mallopt(M_ARENA_MAX, 1) != 1:
        print("note: mallopt(M_ARENA_MAX, 1) refused; the two fits may allocate from separate arenas")
    if steady and (
        libc.mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD) != 1
        or libc.mallopt(M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD) != 1
    ):
        print("note: mallopt refused the steady thresholds; glibc's dynamic ones stay")


class Baton:
    """Two fits in two threads taking turns at batch starts: warm-up segments, then timed rounds in ABBA order."""

    def __init__(self, warmup: int, rounds: int, steps: int, fits: int = 2) -> None:
        self.segments = [(0, warmup, False), (1, warmup, False)]
        for r in range(rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            self.segments += [(v, steps, True) for v in order]
        self.times: dict[int, list[float]] = {0: [], 1: []}
        self.charge: dict[int, Callable[[], float]] = {0: lambda: 0.0, 1: lambda: 0.0}
        self.max_steps = warmup + rounds * steps + 1  # the tick that ends a fit's last segment starts one more step
        self._cond = threading.Condition()
        self._fits = fits
        self._arrived: set[int] = set()  # fits whose first batch has started: their set-up is over
        self._index = 0
        self._count = 0
        self._start = 0.0

    def _mine(self, me: int) -> bool:
        return self._index >= len(self.segments) or self.segments[self._index][0] == me

    def tick(self, me: int) -> None:
        """A batch starts in fit `me`: end its segment when due (timing it), wait for its turn, count the step."""
        with self._cond:
            if me not in self._arrived:  # no fit trains before every fit is set up
                self._arrived.add(me)
                self._cond.notify_all()
                self._cond.wait_for(lambda: len(self._arrived) >= self._fits)
        now = time.perf_counter()
        with self._cond:
            if self._index < len(self.segments) and self.segments[self._index][0] == me and self._count:
                _, steps, timed = self.segments[self._index]
                if self._count == steps:
                    charged = self.charge[me]()  # after the warm-up too: the first flush opens the connection
                    if timed:
                        self.times[me].append((now - self._start + charged) / steps)
                    self._index, self._count = self._index + 1, 0
                    self._cond.notify_all()
            if not self._mine(me):
                self._cond.wait_for(lambda: self._mine(me))
            if self._index >= len(self.segments):
                return
            if self._count == 0:
                self._start = time.perf_counter()
            self._count += 1

    def set_up(self, me: int) -> None:
        """Wait until fit `me` has started its first batch (or a fit failed)."""
        with self._cond:
            self._cond.wait_for(lambda: me in self._arrived or self._fits == 0)

    def abandon(self) -> None:
        """A fit failed: let the other one run to its end."""
        with self._cond:
            self._index = len(self.segments)
            self._fits = 0
            self._cond.notify_all()


def fit_lightning(case: Case, steps: int, callback: Any, tick: Callable[[], bool | None]) -> None:
    """One Lightning fit of at most `steps` steps; `tick` at each batch start (True: stop after this step)."""
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = case.build()

        def training_step(self, batch: dict[str, torch.Tensor], idx: int) -> torch.Tensor:
            return F.cross_entropy(self.model(batch["x"]), batch["labels"].flatten())

        def on_train_batch_start(self, batch: Any, idx: int) -> None:
            if tick():
                self.trainer.should_stop = True

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return case.optimizer(self.model)

    x, y = _case_data(case)
    loader = torch.utils.data.DataLoader(_Repeat(x, y, steps + 1), batch_size=len(x))
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[callback] if callback is not None else [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), loader)


def fit_hf(case: Case, steps: int, callback: Any, root: Path, tick: Callable[[], bool | None]) -> None:
    """One Trainer.train() of at most `steps` steps; `tick` at each step start (True: stop after this step)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Tick(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if tick():
                control.should_training_stop = True

    torch.manual_seed(0)
    model = _Wrapped(case.build())
    x, y = _case_data(case)
    args = TrainingArguments(
        output_dir=str(root),
        max_steps=steps,
        per_device_train_batch_size=len(x),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
    )
    callbacks = [Tick(), *([callback] if callback is not None else [])]
    optimizer = case.optimizer(model)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Repeat(x, y, steps + 1),
        optimizers=(optimizer, None),
        callbacks=callbacks,
    )
    trainer.train()


def run_fit(framework: str, case: Case, steps: int, callback: Any, root: Path, tick: Callable[[], bool | None]) -> None:
    """A Lightning fit or a Trainer.train() (its output under `root`) of at most `steps` steps."""
    if framework == "lightning":
        fit_lightning(case, steps, callback, tick)
    else:
        fit_hf(case, steps, callback, root, tick)


def _callback_class(framework: str) -> Any:
    """The framework's GradHealthCallback."""
    if framework == "lightning":
        from gradhealth.integrations.lightning import GradHealthCallback

        return GradHealthCallback
    from gradhealth.integrations.transformers import GradHealthCallback as HFCallback

    return HFCallback


def _fits_side_by_side(
    framework: str, case: Case, callback: Any, root: Path, baton: Baton, watched_first: bool = False
) -> tuple[list[float], list[float]]:
    """One plain fit and one fit with `callback` (None: plain too) taking turns; each one's per-round step times.

    `watched_first`: the fit with the callback sets up (allocates its model, data and optimizer) first.
    """
    from watch_overhead import shipping_charge

    baton.charge[1] = lambda: shipping_charge(callback.watch)() if callback and callback.watch is not None else 0.0
    errors: list[BaseException] = []

    def fit(index: int) -> None:
        try:
            run_fit(
                framework,
                case,
                baton.max_steps,
                callback if index else None,
                root / str(index),
                lambda: baton.tick(index),
            )
        except BaseException as exc:
            errors.append(exc)
            baton.abandon()

    threads = [threading.Thread(target=fit, args=(i,)) for i in (0, 1)]
    # the frameworks' own prints and logs (tips, devices, train summaries); a fit's error is re-raised below
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        for index in (1, 0) if watched_first else (0, 1):  # one set-up at a time
            threads[index].start()
            baton.set_up(index)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return baton.times[0], baton.times[1]


def measure(
    framework: str,
    case: Case,
    client: gradhealth.Client,
    plan: tuple[int, int, int, float, int],
    root: Path,
    control: bool = False,
) -> dict[str, Any]:
    """The callback's overhead Estimate over `pairs` independent pairs of fits, the plain fit's median step time,
    steps per round, the final stride and each pair's own estimate.

    `control`: both fits plain (an A/A row), so the estimate is the benchmark's own bias and noise.
    """
    rounds, steps, warmup, round_seconds, pairs = plan
    GradHealthCallback = _callback_class(framework)  # noqa: N806
    if not steps:  # a short plain fit tells the step time
        probe = Baton(5, 1, 10, fits=1)
        probe.segments = [(0, 5, False), (0, 10, True)]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            run_fit(framework, case, 16, None, root, lambda: probe.tick(0))
        probe.tick(0)
        steps = max(2, round(round_seconds / probe.times[0][0]))
    plain: list[float] = []
    watched: list[float] = []
    groups: list[int] = []
    each: list[Estimate] = []
    callback = None
    for pair in range(pairs):  # fresh models each time: one instance's own speed is not the callback's cost
        baton = Baton(warmup, max(2, round(rounds / pairs)), steps)
        callback = None if control else GradHealthCallback(f"bench-{framework}-{case.name}-{pair}", client)
        # which fit sets up first alternates: the other allocates around it, and a set-up order that favours one
        # would be counted as the callback's cost
        times = _fits_side_by_side(framework, case, callback, root / str(pair), baton, watched_first=pair % 2 == 1)
        plain += times[0]
        watched += times[1]
        groups += [pair] * len(times[0])
        each.append(paired(*times))
    return {
        "overhead": paired(plain, watched, groups=groups),
        "plain": statistics.median(plain),
        "steps": steps,
        "stride": callback.watch.stride if callback and callback.watch is not None else 0,
        "pairs": each,
    }


def _reattachable(framework: str, run: str, client: gradhealth.Client) -> Any:
    """The framework's callback, able to close its watch and open a fresh one mid-fit (the attached table)."""
    base = _callback_class(framework)
    start = "on_fit_start" if framework == "lightning" else "on_train_begin"

    class Reattachable(base):  # type: ignore[misc, valid-type]
        opened = 0

        def attach(self) -> None:
            """A fresh watch, set up as the fit's start set up the first (default settings, a run of its own)."""
            if self.watch is None:
                self.opened += 1
                self.run = f"{run}-{self.opened}"
                getattr(base, start)(self, *self.start_args, **self.start_kwargs)

        def detach(self) -> None:
            """Close the watch: its hooks go, its shipping thread ends, the handle is dropped."""
            if self.watch is not None:
                self.watch.close()
                self.watch = None

    def remember(self: Any, *args: Any, **kwargs: Any) -> None:
        self.start_args, self.start_kwargs = args, kwargs
        getattr(base, start)(self, *args, **kwargs)

    setattr(Reattachable, start, remember)
    return Reattachable(run, client)


def measure_within(
    framework: str,
    case: Case,
    client: gradhealth.Client,
    plan: tuple[int, int, float, int],
    root: Path,
    control: bool = False,
) -> dict[str, Any]:
    """One fit's added time: recording paused in alternate rounds (lead 0), or a paused watch detached (lead: untimed
    steps after each switch); the idle hooks' measured share (paused only), the stride.

    `plan`: rounds, warm-up steps, seconds per round, lead. `control` (with a lead): the A/A, each attached round's
    watch closed before its timer (AttachmentControl).
    """
    from watch_overhead import shipping_charge

    rounds, warmup, round_seconds, lead = plan
    name = f"bench-{'control' if control else 'attached' if lead else 'within'}-{framework}-{case.name}"
    callback = _reattachable(framework, name, client) if lead else _callback_class(framework)(name, client)
    charge = lambda: shipping_charge(callback.watch)() if callback.watch is not None else 0.0  # noqa: E731
    handle = lambda: callback.watch  # noqa: E731
    if lead:
        schedule: Alternation = (AttachmentControl if control else Attachment)(
            warmup, rounds, round_seconds, charge, handle, callback.attach, callback.detach, lead
        )
    else:
        schedule = Alternation(warmup, rounds, round_seconds, charge, handle)
    # tick() ends the fit; the limit sizes the data set (the Trainer shuffles its indices): rounds of at most
    # 64 strides, or round_seconds of 1 ms steps, and their lead-ins
    limit = warmup + rounds * (lead + 64 + round(round_seconds / 1e-3)) + 1
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run_fit(framework, case, limit, callback, root / name, schedule.tick)
    if schedule.rounds and len(schedule.times[True]) + len(schedule.times[False]) < schedule.rounds:
        raise RuntimeError(f"the {framework} fit ended before its rounds did")
    idle = 0.0  # the attached table's difference includes the hooks
    if not lead:
        budget = callback.watch._budget  # the handle's own estimates: the idle hooks' cost per step, as a fraction
        idle = budget._estimate[3] if budget._estimate is not None else 0.0
    off, on = schedule.times[False], schedule.times[True]
    n = min(len(off), len(on))
    return {
        "added": paired(off[:n], on[:n]),
        "idle": idle,
        "plain": statistics.median(off),
        "steps": (min(schedule.lengths), max(schedule.lengths)),
        "stride": (min(schedule.strides), max(schedule.strides)),
    }


def _span(low_high: tuple[int, int]) -> str:
    """`7` or `7-11`."""
    low, high = low_high
    return str(low) if low == high else f"{low}-{high}"


def within_table(
    args: argparse.Namespace, client: gradhealth.Client, root: Path, lead: int = 0
) -> dict[str, tuple[Estimate, float]]:
    """One fit per row, recording paused (lead 0) or a paused watch detached in alternate rounds; each row's estimate
    (paused: recording; attached: the paused watch) and the idle hooks' share measured apart (paused only)."""
    rounds = args.attached if lead else args.within
    if lead:
        print(
            f"one fit per row with the callback: {args.warmup} warm-up steps, then {rounds} rounds (ABBA) of "
            f"{args.attached_seconds} s, a paused watch attached (a fresh one, default settings, recording through the "
            f"{lead} untimed steps before the round) and none (closed; as many untimed steps) in turn; 'paused watch': "
            "added time of the attached rounds [95% bootstrap interval, rounds resampled]: its hooks, the memory it "
            "holds, its idle thread; 'stride': the fresh watches' strides when paused"
            + ("; 'A/A' rows: each attached round's watch closed before its timer" if args.attached_control else "")
            + f"; glibc thresholds {'fixed' if args.steady_malloc else 'dynamic'}\n"
        )
    else:
        print(
            f"one fit per row with the callback: {args.warmup} warm-up steps, then {rounds} rounds (ABBA) of whole "
            "strides, recording and paused in turn; 'recording': added time of the recording rounds [95% bootstrap "
            "interval, rounds resampled]; 'idle': the hooks' cost on every step (the handle's measure); 'total': both\n"
        )
    print(
        f"{'framework':13s} {'model':38s} {'no watch' if lead else 'paused':>8s} {'steps':>5s} "
        f"{'paused watch [95% CI]' if lead else 'recording [95% CI]':>22s} {'median':>7s} "
        + ("" if lead else f"{'idle':>6s} {'total':>7s} ")
        + f"{'stride':>7s}  verdict"
    )
    rows: dict[str, tuple[Estimate, float]] = {}
    seconds = args.attached_seconds if lead else args.round_seconds
    controls = (False, True) if lead and args.attached_control else (False,)
    for framework in args.frameworks.split(","):
        for name in args.models.split(","):
            for control in controls:
                plan = (rounds, args.warmup, seconds, lead)
                got = measure_within(framework, CASES[name], client, plan, root, control)
                est: Estimate = got["added"]
                total = _shifted(est, got["idle"])
                if not control:
                    rows[f"{framework} {CASES[name].name}"] = (est, got["idle"])
                print(
                    f"{framework + (' A/A' if control else ''):13s} {CASES[name].name:38s} {got['plain'] * 1e3:5.1f} ms "
                    f"{_span(got['steps']):>5s} {est.cell():>22s} {est.median_ratio:>+7.1%} "
                    + ("" if lead else f"{got['idle']:>+6.2%} {total.point:>+7.1%} ")
                    + f"{_span(got['stride']):>7s}  {'(no watch timed)' if control else total.verdict(BUDGET)}"
                )
    return rows


def _verdict(overhead: float) -> str:
    """PASS or FAIL against the budget."""
    return f"{'PASS' if overhead <= BUDGET else 'FAIL'} at {BUDGET:.0%}"


def _shifted(est: Estimate, by: float) -> Estimate:
    """`est` with `by` added to its point and interval (a cost measured apart)."""
    return replace(est, point=est.point + by, low=est.low + by, high=est.high + by)


def pairs_table(args: argparse.Namespace, client: gradhealth.Client, root: Path) -> Estimate | None:
    """Plain and watched fits side by side, `--pairs` fresh pairs per row; the worst row's estimate."""
    plan = (args.rounds, args.steps, args.warmup, args.round_seconds, args.pairs)
    print(
        f"{args.pairs} pairs of fits per row, each {args.warmup} warm-up steps per fit, then "
        f"{max(2, round(args.rounds / args.pairs))} paired rounds (ABBA); added time vs plain: total-time ratio "
        "[95% bootstrap interval, pairs then rounds resampled]; 'pairs': each pair's own estimate\n"
    )
    print(
        f"{'framework':13s} {'model':38s} {'plain':>8s} {'steps':>5s} {'callback [95% CI]':>22s} "
        f"{'median':>7s} {'stride':>6s}  {'verdict':26s} pairs"
    )
    worst: Estimate | None = None
    rows = [
        (f, name, control)
        for f in args.frameworks.split(",")
        for name in args.models.split(",")
        for control in ((False, True) if args.control else (False,))
    ]
    for framework, name, control in rows:
        got = measure(framework, CASES[name], client, plan, root, control)
        est: Estimate = got["overhead"]
        if not control:
            worst = est if worst is None or est.point > worst.point else worst
        label = f"{framework} A/A" if control else framework
        print(
            f"{label:13s} {CASES[name].name:38s} {got['plain'] * 1e3:5.1f} ms {got['steps']:>5d} "
            f"{est.cell():>22s} {est.median_ratio:>+7.1%} {got['stride']:>6d}  {est.verdict(BUDGET):26s} "
            + " ".join(f"{pair.point:+.1%}" for pair in got["pairs"])
        )
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--within", type=int, default=96, help="rounds of the one-fit table (0: none)")
    parser.add_argument("--attached", type=int, default=0, help="rounds of the attached/detached table (0: none)")
    parser.add_argument("--attached-seconds", type=float, default=2.0, help="seconds per round of that table")
    parser.add_argument("--lead", type=int, default=60, help="untimed steps after each attach or detach")
    parser.add_argument("--rounds", type=int, default=24, help="paired rounds in all, shared among the --pairs")
    parser.add_argument("--pairs", type=int, default=4, help="independent pairs of fits per row (0: no such table)")
    parser.add_argument("--steps", type=int, default=0, help="steps per fit and round (0: --round-seconds' worth)")
    parser.add_argument("--round-seconds", type=float, default=0.6, help="plain-fit seconds per round")
    parser.add_argument("--warmup", type=int, default=40, help="steps per fit before the timed ones")
    parser.add_argument("--models", default="cnn,mlp,transformer")
    parser.add_argument("--frameworks", default="lightning,hf")
    parser.add_argument("--control", action="store_true", help="also an A/A row per case: both fits plain")
    parser.add_argument(
        "--attached-control", action="store_true", help="also an A/A row per case in the attached table: no watch timed"
    )
    parser.add_argument("--steady-malloc", action="store_true", help="fixed glibc mmap and trim thresholds")
    args = parser.parse_args()
    configure_malloc(args.steady_malloc)
    torch.set_num_threads(1)  # one core for training; the sink (another process) has the other
    warnings.filterwarnings("ignore")  # the frameworks' notes and the throttle's: the stride column shows it
    for name in ("lightning", "lightning.pytorch", "transformers", "gradhealth"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=WatchWarning)
    with tempfile.TemporaryDirectory(prefix="gradhealth-callback-bench-") as tmp:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        with embedded(Path(tmp)) as (url, key):
            client = gradhealth.Client(base_url=url, api_key=key)
            print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} cores; sink: gradhealth serve at {url}")
            print(f"start: {load()}\n")
            within = within_table(args, client, Path(tmp)) if args.within else {}
            if within:
                print()
            attached = within_table(args, client, Path(tmp), args.lead) if args.attached else {}
            if attached:
                print()
            worst = pairs_table(args, client, Path(tmp)) if args.pairs else None
            print(f"\nend: {load()}")
            if within:
                label, total = max(((k, _shifted(*v)) for k, v in within.items()), key=lambda row: row[1].point)
                print(f"worst in one fit (recording + idle hooks): {label} {total.point:+.1%}: {total.verdict(BUDGET)}")
            for label, (watch, _) in attached.items():  # a paused watch's whole cost, in place of the hooks' share
                if label in within:
                    full = within[label][0].point + watch.point
                    print(f"{label}, one fit: recording + a paused watch {full:+.1%}: {_verdict(full)}")
            if worst is not None:
                print(
                    f"worst callback overhead at default settings, separate fits {worst.cell()}: "
                    f"{worst.verdict(BUDGET)} at {BUDGET:.0%}"
                )


if __name__ == "__main__":
    main()
