"""benchmarks/_alternation.py: the one-fit table's rounds alternate ABBA and each lasts whole strides."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
    schedule = _alternation.Alternation(warmup=5, rounds=8, round_seconds=0.0, charge=lambda: charged.append(1) or 0.0)
    watch = schedule.watch = FakeWatch()
    ticks = 0
    while not schedule.tick():
        watch.began_paused.append(watch.paused)
        ticks += 1
        if len(schedule.lengths) == 4:  # the budget raises the stride during the fourth round
            watch.stride = 4
        assert ticks < 1000
    assert schedule.lengths == [3, 3, 3, 3, 4, 4, 4, 4]  # one stride per round (round_seconds 0), as in force
    assert schedule.strides == schedule.lengths
    recording = [not paused for paused in watch.began_paused[4:]]  # from the tick that ends the warm-up on
    expected = [r % 4 in (0, 3) for r in range(8) for _ in range(schedule.lengths[r])]
    assert recording[: len(expected)] == expected  # ABBA: recording, paused, paused, recording
    assert len(schedule.times[True]) == len(schedule.times[False]) == 4
    assert len(charged) == 4  # shipping is charged after recording rounds only
    assert not watch.paused  # the fit ends recording, as a user's would
