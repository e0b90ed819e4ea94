"""benchmarks/_paired.py: the watch benchmarks' verdicts rest on its point estimate and interval."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

# loaded by path: putting benchmarks/ on sys.path would let its scripts shadow other top-level modules
_SPEC = importlib.util.spec_from_file_location(
    "benchmarks_paired", Path(__file__).resolve().parents[1] / "benchmarks/_paired.py"
)
assert _SPEC is not None and _SPEC.loader is not None
_paired = sys.modules["benchmarks_paired"] = importlib.util.module_from_spec(_SPEC)  # dataclasses look it up
_SPEC.loader.exec_module(_paired)
paired = _paired.paired


def _rounds(offsets: list[float], per_group: int, seed: int = 1) -> tuple[list[float], list[float], list[int]]:
    """Plain and watched round times: watched = plain x (1 + its set-up's offset), with round-to-round noise."""
    rng = random.Random(seed)
    plain, watched, groups = [], [], []
    for group, offset in enumerate(offsets):
        for _ in range(per_group):
            base = 1.0 + rng.gauss(0, 0.02)
            plain.append(base)
            watched.append(base * (1 + offset) * (1 + rng.gauss(0, 0.005)))
            groups.append(group)
    return plain, watched, groups


def test_point_is_the_total_time_ratio() -> None:
    plain, watched, _ = _rounds([0.02, 0.02], 6)
    estimate = paired(plain, watched)
    assert abs(estimate.point - (sum(watched) / sum(plain) - 1)) < 1e-12
    assert estimate.low <= estimate.point <= estimate.high


def test_clusters_carry_the_spread_between_set_ups() -> None:
    """Set-ups at -2% and +6%: rounds alone give a narrow interval, resampling set-ups a wide one covering both."""
    plain, watched, groups = _rounds([-0.02, 0.06, -0.02, 0.06], 6)
    rounds_only = paired(plain, watched)
    clustered = paired(plain, watched, groups=groups)
    assert clustered.point == rounds_only.point
    assert clustered.high - clustered.low > 2 * (rounds_only.high - rounds_only.low)
    assert clustered.low < 0.0 and clustered.high > 0.04


def test_one_group_is_the_plain_bootstrap() -> None:
    plain, watched, _ = _rounds([0.03], 24)
    assert paired(plain, watched, groups=[7] * 24) == paired(plain, watched)
