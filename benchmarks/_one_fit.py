"""The callbacks benchmark's one-fit tables (benchmarks/watch_callbacks.py): recording paused, or a paused watch
detached, in alternate rounds of one fit (schedules in benchmarks/_alternation.py)."""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from _alternation import Alternation, Attachment, AttachmentControl
from _fits import callback_class, run_fit
from _paired import Estimate, paired
from watch_overhead import BUDGET, CASES, Case

import gradhealth


def _reattachable(framework: str, run: str, client: gradhealth.Client) -> Any:
    """The framework's callback, able to close its watch and open a fresh one mid-fit (the attached table)."""
    base = callback_class(framework)
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


def _each(targets: list[Any], method: str) -> None:
    """Call `method` on each of `targets`, in order (copies switch together)."""
    for target in targets:
        getattr(target, method)()


class _Together:
    """Several paused-or-recording watches as one handle for a schedule: the first one's stride, paused together."""

    def __init__(self, watches: list[Any]) -> None:
        self.watches = watches
        self.stride = watches[0].stride

    def pause(self) -> None:
        _each(self.watches, "pause")

    def resume(self) -> None:
        _each(self.watches, "resume")


class Copies:
    """`n` reattachable callbacks in one fit, attached and detached together (the attached table's `--copies`).

    n paused watches cost n times what one costs (hooks, memory held, idle threads), while the rounds' noise, which
    comes from the fit, stays what it is: the table's estimate divided by n bounds one watch's cost n times tighter.
    """

    def __init__(self, framework: str, run: str, client: gradhealth.Client, n: int) -> None:
        self.callbacks = [_reattachable(framework, f"{run}-copy{i}" if n > 1 else run, client) for i in range(n)]

    def attach(self) -> None:
        _each(self.callbacks, "attach")

    def detach(self) -> None:
        _each(self.callbacks, "detach")

    def handle(self) -> _Together | None:
        """The attached watches as one handle; None while detached (or before the fit starts them)."""
        watches = [callback.watch for callback in self.callbacks]
        return None if any(watch is None for watch in watches) else _Together(watches)

    def charge(self) -> float:
        """Flush every attached watch; their shipping threads' CPU seconds meanwhile."""
        from watch_overhead import shipping_charge

        return sum(shipping_charge(c.watch)() for c in self.callbacks if c.watch is not None)


def measure_within(
    framework: str,
    case: Case,
    client: gradhealth.Client,
    plan: tuple[int, int, float, int],
    root: Path,
    control: bool = False,
    copies: int = 1,
) -> dict[str, Any]:
    """One fit's added time: recording paused in alternate rounds (lead 0), or a paused watch detached (lead: untimed
    steps after each switch); the idle hooks' measured share (paused only), the stride.

    `plan`: rounds, warm-up steps, seconds per round, lead. `control` (with a lead): the A/A, each attached round's
    watch closed before its timer (AttachmentControl). `copies` (with a lead): callbacks attached together (Copies).
    """
    from watch_overhead import shipping_charge

    rounds, warmup, round_seconds, lead = plan
    name = f"bench-{'control' if control else 'attached' if lead else 'within'}-{framework}-{case.name}"
    if lead:
        together = Copies(framework, name, client, copies)
        callbacks = together.callbacks
        schedule: Alternation = (AttachmentControl if control else Attachment)(
            warmup, rounds, round_seconds, together.charge, together.handle, together.attach, together.detach, lead
        )
    else:
        callback = callback_class(framework)(name, client)
        callbacks = [callback]
        charge = lambda: shipping_charge(callback.watch)()  # noqa: E731
        schedule = Alternation(warmup, rounds, round_seconds, charge, lambda: callback.watch)
    # tick() ends the fit; the limit sizes the data set (the Trainer shuffles its indices): rounds of at most
    # 64 strides, or round_seconds of 1 ms steps, and their lead-ins
    limit = warmup + rounds * (lead + 64 + round(round_seconds / 1e-3)) + 1
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run_fit(framework, case, limit, callbacks, root / name, schedule.tick)
    if schedule.rounds and len(schedule.times[True]) + len(schedule.times[False]) < schedule.rounds:
        raise RuntimeError(f"the {framework} fit ended before its rounds did")
    idle = 0.0  # the attached table's difference includes the hooks
    if not lead:
        budget = callbacks[0].watch._budget  # the handle's own estimates: the idle hooks' cost per step, as a fraction
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
    """One fit per row, recording paused (lead 0) or paused watches detached in alternate rounds; each row's estimate
    (paused: recording; attached: one paused watch's share of `--copies`) and the idle hooks' share measured apart
    (paused only). A/A rows are printed, not returned."""
    rounds = args.attached if lead else args.within
    copies = args.copies if lead else 1
    if lead:
        print(
            f"one fit per row with the callback: {args.warmup} warm-up steps, then {rounds} rounds (ABBA) of "
            f"{args.attached_seconds} s, a paused watch attached (a fresh one, default settings, recording through the "
            f"{lead} untimed steps before the round) and none (closed; as many untimed steps) in turn; 'paused watch': "
            "added time of the attached rounds [95% bootstrap interval, rounds resampled]: its hooks, the memory it "
            "holds, its idle thread; 'stride': the fresh watches' strides when paused"
            + (
                f"; {copies} callbacks attached together, 'per watch': the estimate / {copies} (the verdict's)"
                if copies > 1
                else ""
            )
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
        + (f"{'per watch':>22s} " if copies > 1 else "")
        + f"{'stride':>7s}  verdict"
    )
    rows: dict[str, tuple[Estimate, float]] = {}
    seconds = args.attached_seconds if lead else args.round_seconds
    controls = (False, True) if lead and args.attached_control else (False,)
    for framework in args.frameworks.split(","):
        for name in args.models.split(","):
            for control in controls:
                plan = (rounds, args.warmup, seconds, lead)
                got = measure_within(framework, CASES[name], client, plan, root, control, copies)
                est: Estimate = got["added"]
                each = scaled(est, 1 / copies)  # one watch's share
                total = shifted(each, got["idle"])
                if not control:
                    rows[f"{framework} {CASES[name].name}"] = (each, got["idle"])
                print(
                    f"{framework + (' A/A' if control else ''):13s} {CASES[name].name:38s} {got['plain'] * 1e3:5.1f} ms "
                    f"{_span(got['steps']):>5s} {est.cell():>22s} {est.median_ratio:>+7.1%} "
                    + ("" if lead else f"{got['idle']:>+6.2%} {total.point:>+7.1%} ")
                    + (f"{each.cell():>22s} " if copies > 1 else "")
                    + f"{_span(got['stride']):>7s}  {'(no watch timed)' if control else total.verdict(BUDGET)}"
                )
    return rows


def scaled(est: Estimate, factor: float) -> Estimate:
    """`est` with its point, interval and median multiplied by `factor` (one of several copies' share)."""
    return replace(
        est,
        point=est.point * factor,
        low=est.low * factor,
        high=est.high * factor,
        median_ratio=est.median_ratio * factor,
    )


def shifted(est: Estimate, by: float) -> Estimate:
    """`est` with `by` added to its point and interval (a cost measured apart)."""
    return replace(est, point=est.point + by, low=est.low + by, high=est.high + by)
