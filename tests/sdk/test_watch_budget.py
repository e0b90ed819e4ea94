"""watch(budget=...): the handle times its own hooks and records less often while they cost too much.

The controller is checked on a synthetic clock (exact, whatever the machine does), then inside
real watched loops whose measurements are scripted (the handle's Budget sees scripted step and
hook times, not the host clock): the handle must hand the budget each step, record at the stride
it sets, warn once, and its recorded numbers must still equal the plain-autograd reference. One
loop keeps the host clock, to check that real measurements reach the budget; it asserts no bound.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradhealth.sdk.watching import WatchWarning, _extras, handle, watch
from gradhealth.sdk.watching._budget import RESERVE, Budget, usable

from .test_watch_support import Net, Reference, assert_matches, batches, recording_client, twin

MS = 1e-3
FULL = 0.03 / (1 - RESERVE)  # a budget whose usable part is 3%: the controller's arithmetic below is on 3%
USABLE = usable(0.03)  # what the default budget leaves to the measured costs (2%)


def simulate(
    budget: float | None,
    plain: Callable[[int], float],
    cost: Callable[[int], float],
    steps: int,
    every: int = 1,
    slots: int = 10,
    idle: float = 0.02 * MS,
    controller: Budget | None = None,
    start: int = 0,
) -> tuple[Budget, list[int], list[int]]:
    """A loop on a synthetic clock: step k takes plain(k) s plus watch()'s cost (cost(k) when recorded, else idle).

    Recording follows Watch._records: a multiple of `every`, `stride` steps after the last recorded one.
    Returns the controller, the stride after each step and the recorded steps.
    """
    b = controller or Budget(budget, every, slots)
    now, last, recorded, strides = b._last or 0.0, None, [], []
    for step in range(start, start + steps):
        records = step % every == 0 and (last is None or step - last >= b.stride)
        spent = cost(step) if records else idle
        now += plain(step) + spent
        b.step(now, spent, len(recorded) if records else None)
        if records:
            last = step
            recorded.append(step)
        strides.append(b.stride)
    return b, strides, recorded


def test_a_dear_recording_is_throttled_to_within_the_budget() -> None:
    # the memory-bound MLP of benchmarks/watch_overhead.py: 43 ms steps, ~6 ms per recorded step
    b, strides, recorded = simulate(FULL, lambda s: 43 * MS, lambda s: 6 * MS, steps=400)
    assert b.throttled and b.stride == 7 == math.ceil((6 - 0.02) / (0.75 * 0.03 * 43 - 0.02))
    assert b.overhead is not None and 0.5 * 0.03 <= b.overhead <= 0.75 * 0.03
    assert b.overhead == pytest.approx((6 + 6 * 0.02) / (7 * 43))
    assert strides[:24] == [1] * 24  # 5 warm-up steps, then each of the 10 sample slots timed twice
    assert len(set(strides[30:])) == 1  # one raise, then steady
    assert set(np.diff(recorded[-20:])) == {7}


def test_each_sample_slot_counts_at_its_share() -> None:
    # one slot in ten measures a huge layer: the mean cost is 1 + 9/10 = 1.9 ms, though the median is 1 ms
    b, _, _ = simulate(None, lambda s: 40 * MS, lambda s: 10 * MS if s % 10 == 0 else 1 * MS, steps=60, slots=10)
    assert b.cost == pytest.approx(1.9 * MS)


def test_hooks_stretched_by_the_scheduler_count_at_their_mean() -> None:
    # a busy machine: one recorded step in 3 loses a 4 ms time slice inside the hooks (2 ms -> 6 ms); the plain
    # step's median is stretched by the same slices on average, so c must be the hooks' mean (10/3 ms), not 2 ms
    b, _, _ = simulate(None, lambda s: 120 * MS, lambda s: 6 * MS if s % 3 == 0 else 2 * MS, steps=60, slots=10)
    assert b.cost == pytest.approx(10 / 3 * MS)
    # one long stall (200 ms in the hooks at step 55) counts at most CLIP x its slot's median: (2 + 2 + 8) / 3 there
    b, _, _ = simulate(None, lambda s: 120 * MS, lambda s: 200 * MS if s == 55 else 2 * MS, steps=60, slots=10)
    assert b.cost == pytest.approx((9 * 2 + 4) / 10 * MS)


def test_tiny_steps_under_the_floor_are_never_throttled() -> None:
    # the e2e models: ~0.3 ms of hooks on a ~0.5 ms step is 60% of it, but under MIN_COST per step
    b, strides, recorded = simulate(FULL, lambda s: 0.5 * MS, lambda s: 0.3 * MS, steps=500)
    assert b.overhead == pytest.approx(0.6, rel=0.01) and not b.throttled
    assert set(strides) == {1} and recorded == list(range(500))
    # just over the floor: throttled until the cost per step is within AIM x MIN_COST
    b, _, _ = simulate(FULL, lambda s: 1 * MS, lambda s: 0.6 * MS, steps=500)
    assert b.stride == 2


def test_stalls_do_not_throttle_nor_release() -> None:
    # a descheduled thread or a GIL hand-over: 15% of the steps stall 5 ms, in the hooks or in the loop
    def stalls(base: float, phase: int) -> Callable[[int], float]:
        return lambda s: base + (5 * MS if (s * 7 + phase) % 20 < 3 else 0.0)

    b, strides, _ = simulate(FULL, stalls(0.5 * MS, 0), stalls(0.3 * MS, 11), steps=600)
    assert set(strides) == {1}
    # an evaluation pass of 10 s every 100 steps does not make the throttled MLP record more often
    b, strides, _ = simulate(FULL, lambda s: 10.0 if s % 100 == 99 else 43 * MS, lambda s: 6 * MS, steps=600)
    assert set(strides[40:]) == {7}


def test_the_stride_comes_back_down_when_steps_grow_longer() -> None:
    b, strides, _ = simulate(FULL, lambda s: 43 * MS, lambda s: 6 * MS, steps=200)
    assert b.stride == 7
    # the loop now spends 400 ms a step (a bigger batch, a slower input pipeline): 1.5% at every step
    b, strides, recorded = simulate(None, lambda s: 400 * MS, lambda s: 6 * MS, steps=60, controller=b, start=200)
    assert b.stride == 1 and strides.index(1) <= 40
    assert recorded[-10:] == list(range(250, 260))
    # changes inside the hysteresis band leave the stride alone: 1.6% and 2.5% at a stride of 7
    for plain in (55 * MS, 35 * MS):
        b, strides, _ = simulate(FULL, lambda s: 43 * MS, lambda s: 6 * MS, steps=200)
        b, strides, _ = simulate(None, lambda s, p=plain: p, lambda s: 6 * MS, steps=200, controller=b, start=200)
        assert set(strides) == {7}


def test_the_stride_is_a_multiple_of_every_and_capped() -> None:
    b, _, recorded = simulate(FULL, lambda s: 43 * MS, lambda s: 6 * MS, steps=1000, every=3)
    assert b.stride == 9 and all(step % 3 == 0 for step in recorded)  # 3 x ceil(7 / 3)
    b, _, _ = simulate(FULL, lambda s: 1 * MS, lambda s: 50 * MS, steps=4000, every=2, slots=1)
    assert b.stride == 128


def test_no_budget_never_throttles_but_still_measures() -> None:
    for budget in (None, 0.0):
        b, strides, recorded = simulate(budget, lambda s: 43 * MS, lambda s: 6 * MS, steps=100)
        assert set(strides) == {1} and recorded == list(range(100)) and not b.throttled
        assert b.overhead == pytest.approx(6 / 43)


def test_the_shipping_threads_cpu_counts_as_recording_cost() -> None:
    # 43 ms steps, 0.6 ms hooks (1.4%: within 3%) and 1.0 ms of shipping CPU per record: 3.7% in all
    alone, _, _ = simulate(FULL, lambda s: 43 * MS, lambda s: 0.6 * MS, steps=200)
    assert alone.stride == 1 and not alone.throttled
    shipped = Budget(FULL, 1, 10)
    shipped.shipping = 1.0 * MS
    b, strides, _ = simulate(FULL, lambda s: 43 * MS, lambda s: 0.6 * MS, steps=200, controller=shipped)
    assert b.throttled and b.cost == pytest.approx(1.6 * MS)
    assert b.stride == math.ceil((1.6 - 0.02) / (0.75 * 0.03 * 43 - 0.02)) == 2
    assert b.overhead is not None and b.overhead <= 0.03


# ---- watched loops ---------------------------------------------------------------------------


class Script:
    """Scripted measurements for watch()'s budget: step k takes plain(k) s, plus cost(k) s when recorded, else idle s."""

    def __init__(self, plain: Callable[[int], float], cost: Callable[[int], float], idle: float = 0.02 * MS) -> None:
        self.plain, self.cost, self.idle = plain, cost, idle
        self.recorded: list[bool] = []  # per step handed to the budget: whether the handle said it was recorded

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The handle builds its Budget from handle.Budget: a subclass that swaps in the scripted times."""
        script, clock = self, [0.0]

        class ScriptedBudget(Budget):
            def step(self, now: float, cost: float, slot: int | None) -> None:
                k = len(script.recorded)
                script.recorded.append(slot is not None)
                spent = script.cost(k) if slot is not None else script.idle
                clock[0] += script.plain(k) + spent
                super().step(clock[0], spent, slot)

        monkeypatch.setattr(handle, "Budget", ScriptedBudget)


def _watched(
    steps: int, **options: Any
) -> tuple[dict[int, dict[str, Any]], Reference, list[float], Any, list[int], list[Any]]:
    """The tiny Net trained watched and by hand; the stride after each step and the warnings too."""
    model, ref_model = twin(Net)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.02, momentum=0.9)
    data = batches(steps)
    client = recording_client()
    losses, strides = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with watch(model, opt, run="t", client=client, **options) as watched:
            assert watched.stride == options.get("every", 1) and watched.overhead is None
            for x, y in data:
                loss = F.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
                watched.log(loss=loss)
                losses.append(loss.item())
                strides.append(watched.stride)
    reference = Reference(ref_model, ref_opt).train(data)
    warned = [w for w in caught if w.category is WatchWarning]
    return client.runs.steps(), reference, losses, watched, strides, warned


def _check_exact(logged: dict[int, dict[str, Any]], reference: Reference, losses: list[float]) -> None:
    assert_matches(logged, {s: reference.steps[s] for s in logged})
    assert [logged[s]["loss"] for s in sorted(logged)] == pytest.approx([losses[s] for s in sorted(logged)], rel=1e-6)


@pytest.mark.parametrize(("every", "stride"), [(1, 10), (2, 10)])
def test_a_dear_loop_is_throttled_to_the_stride_the_budget_sets_and_stays_exact(
    monkeypatch: pytest.MonkeyPatch, every: int, stride: int
) -> None:
    # the memory-bound MLP's numbers (43 ms steps, 6 ms per recorded step) within the 2% the default 3% leaves:
    # ceil((6 - 0.02) / (0.75 x 0.02 x 43 - 0.02)) = 10 x every=1, 2 x ceil(10 / 2) for every=2
    script = Script(lambda k: 43 * MS, lambda k: 6 * MS)
    script.install(monkeypatch)
    logged, reference, losses, watched, strides, warned = _watched(300, every=every)
    steps = sorted(logged)
    assert len(script.recorded) == 300 and [k for k, rec in enumerate(script.recorded) if rec] == steps
    raised = strides.index(stride)  # one raise, once measured, then steady
    assert strides == [every] * raised + [stride] * (300 - raised) and raised >= 12 * every
    assert watched.overhead == pytest.approx((6 + (stride - 1) * 0.02) / (stride * 43))
    assert steps[:12] == list(range(0, 12 * every, every))  # not throttled before it measured
    assert set(np.diff(steps[-20:])) == {stride} and watched.steps_recorded == len(steps)
    _check_exact(logged, reference, losses)
    [message] = [str(w.message) for w in warned]
    at_every = {1: "14.0%", 2: "7.0%"}[every]  # (6 + (every - 1) x 0.02) / (every x 43)
    assert (
        f"recording cost {at_every} of the step time (6.00 ms per recorded step, 43.0 ms per step without it)"
        in message
    )
    assert "over the 2% that budget=3% leaves to what watch() times" in message
    assert f"recording one step in {stride} from now on" in message
    assert "watch(..., budget=None) records" in message


def test_budget_none_records_every_step_whatever_it_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    Script(lambda k: 43 * MS, lambda k: 6 * MS).install(monkeypatch)
    logged, reference, losses, watched, strides, warned = _watched(200, budget=None)
    assert sorted(logged) == list(range(200)) and set(strides) == {1} and not warned
    assert watched.overhead == pytest.approx(6 / 43)  # measured all the same
    _check_exact(logged, reference, losses)


def test_the_stride_comes_back_down_when_the_cost_no_longer_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    # 150 steps of 43 ms, then steps of 400 ms (a bigger batch, a slower input pipeline): 6 ms is 1.5% of those
    Script(lambda k: 43 * MS if k < 150 else 400 * MS, lambda k: 6 * MS).install(monkeypatch)
    logged, reference, losses, watched, strides, _ = _watched(220)
    assert set(strides[40:150]) == {10}
    # the median step time turns after 17 long steps, the stride at the next recorded step
    assert watched.stride == 1 and strides.index(1, 150) <= 150 + 17 + 10, strides[150:]
    assert sorted(logged)[-5:] == [215, 216, 217, 218, 219]
    _check_exact(logged, reference, losses)


def test_tiny_models_record_every_step_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # ~0.3 ms of hooks on a ~0.5 ms step: 60% of it, but under the MIN_COST floor per step
    Script(lambda k: 0.5 * MS, lambda k: 0.3 * MS).install(monkeypatch)
    logged, reference, losses, watched, strides, warned = _watched(200)
    assert sorted(logged) == list(range(200)) and set(strides) == {1} and not warned
    assert watched.overhead == pytest.approx(0.6)
    _check_exact(logged, reference, losses)


def test_the_host_clock_reaches_the_budget() -> None:
    # unscripted: whatever this machine measures, it is a cost > 0 and the stride stays a multiple of every
    logged, reference, losses, watched, strides, _ = _watched(120, every=2)
    assert watched.overhead is not None and 0 < watched.overhead < math.inf
    assert watched.stride % 2 == 0 and all(gap % 2 == 0 for gap in np.diff(sorted(logged)))
    _check_exact(logged, reference, losses)


def test_the_budget_is_checked_and_sent_in_the_run_config() -> None:
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="budget"):
            watch(Net(), client=recording_client(), budget=bad)
    client = recording_client()
    watch(Net(), client=client, budget=0.05).close()
    watch(Net(), client=client, budget=0).close()
    assert [c["config"]["budget"] for c in client.runs.created] == [0.05, None]


# ---- distributions share the budget --------------------------------------------------------


def _sketched_loop(
    monkeypatch: pytest.MonkeyPatch, plain: float, cost: float, sketch_cost: float, steps: int
) -> tuple[Any, list[int], int]:
    """A watched loop on scripted times: the budget's (Script) and each sketch's (`sketch_cost` s on a fake clock).

    Returns the handle, the sketched steps and the first step after which the handle had measured its overhead.
    """
    Script(lambda k: plain, lambda k: cost).install(monkeypatch)
    clock = [0.0]

    def sketches(*args: Any, **kwargs: Any) -> torch.Tensor:
        clock[0] += sketch_cost
        return real_sketches(*args, **kwargs)

    real_sketches = _extras.layer_sketches
    monkeypatch.setattr(_extras, "layer_sketches", sketches)
    monkeypatch.setattr(_extras, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    client = recording_client()
    measured_at = None
    with watch(model, opt, run="t", client=client) as watched:
        for k, (x, y) in enumerate(batches(steps)):
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            if measured_at is None and watched.overhead is not None:
                measured_at = k
    sketched = [s for batch in client.runs.batches for s in batch.get("distributions", {}).get("steps", [])]
    assert measured_at is not None
    return watched, sketched, measured_at


@pytest.mark.parametrize(
    ("plain", "cost", "sketch_cost"),
    [
        (43 * MS, 6 * MS, 40 * MS),  # the memory-bound MLP: recording throttled to ~2% of the step, a dear sketch
        (200 * MS, 1 * MS, 30 * MS),  # recording cheap (0.5%): sketches take what is left, at the 10-step floor
        (50 * MS, 0.5 * MS, 400 * MS),  # a sketch dearer than several steps
    ],
)
def test_sketches_and_recording_together_stay_within_the_budget(
    monkeypatch: pytest.MonkeyPatch, plain: float, cost: float, sketch_cost: float
) -> None:
    warnings.simplefilter("ignore", WatchWarning)  # the throttle's note
    watched, sketched, measured_at = _sketched_loop(monkeypatch, plain, cost, sketch_cost, steps=1500)
    assert sketched and sketched[0] > measured_at  # no sketch before the step time is measured
    recording = watched.overhead * plain  # seconds per step at the stride in force
    assert watched.sketch_stride == watched._extras.sketches.stride
    gaps = np.diff(sketched)  # each gap follows the sketches' measured cost (the first, recording's first estimate)
    assert len(gaps) and gaps.min() >= 10 and all(gap >= watched.sketch_stride >= 10 for gap in gaps[1:])
    per_step = sketch_cost * len(gaps) / (sketched[-1] - sketched[0])  # the sketches' cost over the run
    assert recording + per_step <= USABLE * plain + 1e-12


def test_sketches_keep_to_their_share_when_recording_is_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording at 0.5% leaves 1.5% of the usable 2%, but sketches take at most a third of it."""
    from gradhealth.sdk.watching._sketch import SHARE

    warnings.simplefilter("ignore", WatchWarning)
    plain, sketch_cost = 200 * MS, 30 * MS
    watched, sketched, _ = _sketched_loop(monkeypatch, plain, 1 * MS, sketch_cost, steps=600)
    gaps = np.diff(sketched)
    assert len(gaps) and sketch_cost / gaps.min() <= SHARE * USABLE * plain + 1e-12
    assert watched.sketch_stride == math.ceil(sketch_cost / (SHARE * USABLE * plain) - 1e-9)  # 23, not 10 (floor)


def test_waiting_for_the_findings_answer_is_charged_to_the_next_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # with on_finding set, a step may wait for the previous batch's answer (Shipper.await_answer): that wait is
    # watch()'s time on the training thread, so the budget must see it; on a scripted clock it takes exactly 1 s
    from gradhealth.sdk.watching._shipper import Shipper

    clock = [0.0]
    handed: list[float] = []

    class Recorded(Budget):
        def step(self, now: float, cost: float, slot: int | None) -> None:
            handed.append(cost)
            super().step(now, cost, slot)

    def waits(self: Shipper, timeout: float) -> None:
        clock[0] += 1.0

    monkeypatch.setattr(handle, "Budget", Recorded)
    monkeypatch.setattr(handle, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(Shipper, "behind", lambda self: len(handed) % 2 == 1)  # after steps 0, 2, 4
    monkeypatch.setattr(Shipper, "await_answer", waits)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt, run="t", client=recording_client(), on_finding=lambda finding, w: None) as watched:
        for x, y in batches(6):
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    assert len(handed) == 6 and watched.steps_taken == 6
    # the wait after step k lands in step k + 1's cost; the clock moves only in the waits
    assert handed == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
