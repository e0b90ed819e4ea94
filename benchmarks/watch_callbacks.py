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
watch. `--attached-control` adds an A/A row per case (`AttachmentControl`): each attached round's watch starts the
same way but is closed before the timer, so neither kind of round is timed with a watch; what it reads is the
schedule's bias plus whatever a watch's passing leaves behind in the allocator. `--steady-malloc` fixes glibc's mmap
and trim thresholds (`configure_malloc` in benchmarks/_fits.py), which otherwise move with every large block freed.
`--copies N` attaches N callbacks together in that table (`Copies` in benchmarks/_one_fit.py): N paused watches cost
N times one, while the rounds' noise, which comes from the fit, does not grow, so the estimate divided by N ("per
watch", the verdict's number) bounds one watch's cost N times tighter. The fits themselves are in
benchmarks/_fits.py, the one-fit tables in benchmarks/_one_fit.py.

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
                                         [--control] [--attached-control] [--copies 1] [--steady-malloc]
"""

from __future__ import annotations

import argparse
import contextlib
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
from pathlib import Path
from typing import Any

import torch
from gradhealth.sdk.watching import WatchWarning

import gradhealth

sys.path.insert(0, str(Path(__file__).parent))
from _fits import callback_class, configure_malloc, run_fit  # noqa: E402
from _one_fit import shifted, within_table  # noqa: E402
from _paired import Estimate, paired  # noqa: E402
from service import embedded  # noqa: E402
from watch_overhead import BUDGET, CASES, Case, load  # noqa: E402


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
                [callback] if index and callback is not None else [],
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
    GradHealthCallback = callback_class(framework)  # noqa: N806
    if not steps:  # a short plain fit tells the step time
        probe = Baton(5, 1, 10, fits=1)
        probe.segments = [(0, 5, False), (0, 10, True)]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            run_fit(framework, case, 16, [], root, lambda: probe.tick(0))
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


def _verdict(overhead: float) -> str:
    """PASS or FAIL against the budget."""
    return f"{'PASS' if overhead <= BUDGET else 'FAIL'} at {BUDGET:.0%}"


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
    parser.add_argument(
        "--copies", type=int, default=1, help="callbacks attached together in the attached table (its estimate / N)"
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
                label, total = max(((k, shifted(*v)) for k, v in within.items()), key=lambda row: row[1].point)
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
