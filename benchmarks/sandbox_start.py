"""What the bubblewrap sandbox costs: a cold analysis child, started and answering, with and without it.

A cold child imports torch and the engine before it answers; the warm spare hides even that from
analyses (it starts during the previous run). Rounds are interleaved so both arms see the same
machine load. Run: `.venv/bin/python benchmarks/sandbox_start.py [--rounds 7]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from gradhealth.workers.sandbox import Isolation, Limits, run_in_child

HERE = Path(__file__).resolve().parent


def echo(payload: dict[str, Any], progress: Any) -> dict[str, Any]:
    """The cheapest target: the measured time is the child's start, imports and the round trip."""
    return {"files": sorted(payload["files"])}


def one_run(isolation: Isolation, model: Path) -> float:
    started = time.perf_counter()
    run_in_child(
        "benchmarks.sandbox_start:echo",
        {},
        Limits(time_s=300, memory_mb=0),
        lambda *_: True,
        files={"model.pt2": model},
        warm=False,
        isolation=isolation,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    model = Path("/tmp/gradhealth-bench-model.pt2")
    model.write_bytes(b"\0" * 2**20)
    arms = {
        "sandboxed (bwrap)": Isolation(sandboxed=True, import_roots=(HERE,)),
        "unsandboxed": Isolation(sandboxed=False, import_roots=(HERE,)),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    one_run(arms["unsandboxed"], model)  # page cache warm-up, not measured
    for _ in range(args.rounds):
        for name, isolation in arms.items():
            times[name].append(one_run(isolation, model))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:>18}: median {value * 1000:7.1f} ms over {args.rounds} cold starts")
    ratio = medians["sandboxed (bwrap)"] / medians["unsandboxed"]
    print(
        f"sandbox / no sandbox: {ratio:.3f}x (added {1000 * (ratio - 1) * medians['unsandboxed']:.0f} ms per cold start)"
    )


if __name__ == "__main__":
    main()
