"""Paired-round overhead estimates with a 95% bootstrap interval, shared by the watch benchmarks.

Round r times the plain loop and the watched loop back to back (the order rotates), so a load change
on the shared machine hits both sides of a pair alike. The overhead is the ratio of the watched
loop's total time to the plain loop's over all rounds, minus 1: a mean, not a median of per-round
ratios, because watch()'s costs come in rare lumps (a distribution sketch every tens to thousands of
steps, a POST every 2 s) that a median of short rounds would leave out. The interval resamples whole
rounds (pairs stay together), 2000 times; the verdict is PASS when the point estimate is within the
budget, and says whether the interval's upper bound is too.

When the rounds come from several independent set-ups (`groups`: fresh model instances, one of which
can run a few percent slower than its twin for its whole life, for reasons the benchmarks do not
separate), the bootstrap resamples set-ups first and rounds within each, so the interval carries the
set-ups' spread too.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    """Added time of the watched loop over the plain one, as a fraction, with its 95% interval."""

    point: float
    low: float
    high: float
    median_ratio: float  # the median of the per-round ratios: a robust cross-check of `point`
    rounds: int

    def cell(self) -> str:
        """`+1.2% [-0.3, +2.6]`."""
        return f"{self.point:+.1%} [{self.low * 100:+.1f}, {self.high * 100:+.1f}]"

    def verdict(self, budget: float) -> str:
        """PASS/FAIL on the point estimate; whether the interval's upper bound is within the budget too."""
        word = "PASS" if self.point <= budget else "FAIL"
        upper = "upper bound within" if self.high <= budget else "upper bound over"
        return f"{word} ({upper})"


def paired(plain: list[float], watched: list[float], seed: int = 0, groups: list[int] | None = None) -> Estimate:
    """The estimate from per-round times of the plain and watched loops (round r of each is one pair).

    `groups`: the set-up each round came from (default: all from one); resampled as clusters.
    """
    if len(plain) != len(watched) or not plain:
        raise ValueError("one plain and one watched time per round")
    n = len(plain)
    clusters: dict[int, list[int]] = {}
    for index, group in enumerate(groups if groups is not None else [0] * n):
        clusters.setdefault(group, []).append(index)
    members = list(clusters.values())
    rng = random.Random(seed)
    boots = []
    for _ in range(RESAMPLES):
        chosen = [members[rng.randrange(len(members))] for _ in members]
        picks = [rounds[rng.randrange(len(rounds))] for rounds in chosen for _ in rounds]
        boots.append(sum(watched[i] for i in picks) / sum(plain[i] for i in picks) - 1)
    boots.sort()
    low, high = boots[int(0.025 * RESAMPLES)], boots[int(0.975 * RESAMPLES) - 1]
    median = statistics.median(w / p - 1 for w, p in zip(watched, plain, strict=True))
    return Estimate(sum(watched) / sum(plain) - 1, low, high, median, n)
