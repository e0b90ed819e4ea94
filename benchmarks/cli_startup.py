"""Start-up time of the `gradhealth` command: --version, and an admin call on a current database.

Median wall time over N runs of each command (fresh processes). Run:
`.venv/bin/python benchmarks/cli_startup.py [--runs 9]`. The target (issue 12) is under 0.5 s each.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

GRADHEALTH = [sys.executable, "-m", "gradhealth.cli"]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        admin = [*GRADHEALTH, "admin", "--data-dir", data]
        subprocess.run([*admin, "create-project", "bench"], check=True, capture_output=True, timeout=120)
        commands = {
            "gradhealth --version": [*GRADHEALTH, "--version"],
            "gradhealth admin create-key": [*admin, "create-key", "bench"],
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):  # interleaved, so load affects every command alike
            for name, command in commands.items():
                times[name].append(timed(command))
    for name, values in times.items():
        print(f"{name:>30}: median {statistics.median(values) * 1000:6.0f} ms  (min {min(values) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
