"""benchmarks/_alternation.py: the one-fit table's rounds alternate ABBA and each lasts whole strides."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# loaded by path: putting benchmarks/ on sys.path would let its scripts shadow other top-level modules
_SPEC = importlib.util.spec_from_file_location(
    "benchmarks_alternation", Path(__file__).resolve().parents[1] / "benchmarks/_alternation.py"
)
assert _SPEC is not None and _SPEC.loader is not None
_alternation = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_alternation)


class FakeWatch:
    """A handle whose stride the test sets; it remembers whether each step began paused."""

    def __init__(self) -> None:
        self.stride = 3
        self.paused = False
        self.began_paused: list[bool] = []

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


def test_rounds_alternate_abba_in_whole_strides_and_the_fit_ends_resumed() -> None:
    charged: list[int] = []
    watch = FakeWatch()
    schedule = _alternation.Alternation(
        warmup=5, rounds=8, round_seconds=0.0, charge=lambda: charged.append(1) or 0.0, handle=lambda: watch
    )
    ticks = 0
    while not schedule.tick():
        watch.began_paused.append(watch.paused)
        ticks += 1
        if len(schedule.lengths) == 4:  # the budget raises the stride during the fourth round
            watch.stride = 4
        assert ticks < 1000
    assert schedule.lengths == [3, 3, 3, 3, 4, 4, 4, 4]  # one stride per round (round_seconds 0), as in force
    assert schedule.strides == [3, 3, 4, 4]  # the recording rounds (0, 3, 4, 7): the stride at each one's start
    recording = [not paused for paused in watch.began_paused[4:]]  # from the tick that ends the warm-up on
    expected = [r % 4 in (0, 3) for r in range(8) for _ in range(schedule.lengths[r])]
    assert recording[: len(expected)] == expected  # ABBA: recording, paused, paused, recording
    assert len(schedule.times[True]) == len(schedule.times[False]) == 4
    assert len(charged) == 4  # shipping is charged after recording rounds only
    assert not watch.paused  # the fit ends recording, as a user's would


def test_paused_watches_attach_and_detach_in_turn_and_are_timed_after_the_lead_in() -> None:
    watches: list[FakeWatch] = [FakeWatch()]  # the fit starts with its callback's watch
    current: list[FakeWatch | None] = [watches[0]]
    charged: list[int] = []  # the tick at which each charge (a flush) happened
    ticks = 0

    def attach() -> None:
        if current[0] is None:
            watches.append(FakeWatch())
            watches[-1].stride = 2 + len(watches) % 2  # fresh watches settle at strides 2 and 3 in turn
            current[0] = watches[-1]

    def detach() -> None:
        current[0] = None

    schedule = _alternation.Attachment(
        warmup=5,
        rounds=8,
        round_seconds=0.0,
        charge=lambda: charged.append(ticks) or 0.0,
        handle=lambda: current[0],
        attach=attach,
        detach=detach,
        lead=4,
    )
    state: list[str] = []  # at each step: "none", "recording" or "paused"
    while not schedule.tick():
        watch = current[0]
        state.append("none" if watch is None else "paused" if watch.paused else "recording")
        ticks += 1
        assert ticks < 1000
    # ABBA over 8 rounds: the first attached round keeps the fit's own watch, rounds 3 and 4 share one
    assert len(watches) == 1 + 2
    assert schedule.strides == [3, 2, 2, 3]  # each attached watch's stride, noted when its round's timer started
    assert schedule.lengths == [1] * 8  # round_seconds 0: one timed step each; no round needs whole strides
    lead, timed = ["recording"] * 4, ["paused"]
    expected = lead + timed + ["none"] * 5 * 2 + lead + timed + ["paused"] * 4 + timed + ["none"] * 5 * 2 + lead + timed
    assert state[4 : 4 + len(expected)] == expected  # from the tick that ends the warm-up
    assert len(schedule.times[True]) == len(schedule.times[False]) == 4
    assert len(charged) == 8  # an attached round is flushed after its lead-in and after its timed steps
    with pytest.raises(ValueError, match="lead"):
        _alternation.Attachment(5, 8, 0.0, lambda: 0.0, lambda: None, attach, detach, lead=0)


def test_the_control_closes_each_attached_watch_before_its_timer() -> None:
    opened: list[FakeWatch] = []
    current: list[FakeWatch | None] = [None]
    closed_at: list[int] = []  # the tick at which each watch was closed
    ticks = 0

    def attach() -> None:
        if current[0] is None:
            opened.append(FakeWatch())
            current[0] = opened[-1]

    def detach() -> None:
        if current[0] is not None:
            closed_at.append(ticks)
        current[0] = None

    attach()  # the fit starts with its callback's watch
    schedule = _alternation.AttachmentControl(
        warmup=5,
        rounds=8,
        round_seconds=0.0,
        charge=lambda: 0.0,
        handle=lambda: current[0],
        attach=attach,
        detach=detach,
        lead=4,
    )
    state: list[str] = []
    while not schedule.tick():
        watch = current[0]
        state.append("none" if watch is None else "paused" if watch.paused else "recording")
        ticks += 1
        assert ticks < 1000
    # every attached round (0, 3, 4, 7) records through its lead with a watch of its own, then times none
    assert len(opened) == 4
    lead, timed = ["recording"] * 4, ["none"]
    expected = lead + timed + ["none"] * 5 * 2 + (lead + timed) * 2 + ["none"] * 5 * 2 + lead + timed
    assert state[4 : 4 + len(expected)] == expected
    assert schedule.strides == [3, 3, 3, 3]  # noted before each watch closed
    assert len(schedule.times[True]) == len(schedule.times[False]) == 4
    assert current[0] is None  # the fit ends with no watch: nothing is resumed
