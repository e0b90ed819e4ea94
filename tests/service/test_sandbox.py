"""The model runs in a child process: crashes, hangs and memory exhaustion fail cleanly."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from gradhealth.workers import sandbox
from gradhealth.workers.sandbox import Aborted, ChildFailure, Isolation, Limits, run_in_child

TARGETS = "tests.service.child_targets"
LIMITS = Limits(time_s=60, memory_mb=0)
TESTS = Isolation(import_roots=(Path(__file__).resolve().parents[1],))  # the child imports tests.service


def run(name: str, limits: Limits = LIMITS, **payload: object) -> dict:  # type: ignore[type-arg]
    seen: list[tuple[str | None, float | None]] = []

    def on_progress(phase: str | None, fraction: float | None) -> bool:
        seen.append((phase, fraction))
        return True

    result = run_in_child(f"{TARGETS}:{name}", dict(payload), limits, on_progress, isolation=TESTS)
    result["seen"] = [s for s in seen if s[0] is not None]
    return result


def test_result_and_progress_come_back_as_json() -> None:
    result = run("ok", value=[1, "two"])
    assert result["echo"] == [1, "two"] and result["pid"] != os.getpid()
    assert result["seen"] == [("step0", 0.0), ("step1", 1 / 3), ("step2", 2 / 3)]


def test_timeout_kills_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    discarded: list[sandbox.Child] = []
    discard = sandbox._discard

    def record(child: sandbox.Child) -> None:
        discarded.append(child)
        discard(child)

    monkeypatch.setattr(sandbox, "_discard", record)
    with pytest.raises(ChildFailure) as info:
        run("hang", Limits(time_s=4, memory_mb=0))
    assert info.value.code == "timeout" and "GRADHEALTH_ANALYSIS_TIME_LIMIT" in info.value.message
    hung = discarded[-1]  # the child that ran the request is discarded last, on the way out
    assert hung.process.returncode == -signal.SIGKILL  # still sleeping at the limit: killed, and reaped
    assert not hung.root.exists()  # its private folder is gone with it


def test_crash_is_reported_and_the_parent_lives() -> None:
    with pytest.raises(ChildFailure) as info:
        run("segfault")
    assert info.value.code == "crashed" and "SIGSEGV" in info.value.message


def test_memory_limit_gives_out_of_memory() -> None:
    with pytest.raises(ChildFailure) as info:
        run("exhaust_memory", Limits(time_s=60, memory_mb=1500))
    assert info.value.code == "out_of_memory"
    assert "1500 MiB" in info.value.message and "GRADHEALTH_ANALYSIS_MEMORY_LIMIT_MB" in info.value.message


def test_input_errors_keep_their_code_and_message() -> None:
    with pytest.raises(ChildFailure) as info:
        run("bad_input")
    assert info.value.code == "invalid_input" and "no 'targets' tensor" in info.value.message


def test_unexpected_errors_are_named() -> None:
    with pytest.raises(ChildFailure) as info:
        run("bug")
    assert info.value.code == "engine_error" and "ZeroDivisionError" in info.value.message


def test_callback_can_abort_a_running_child() -> None:
    with pytest.raises(Aborted):
        run_in_child(f"{TARGETS}:hang", {}, LIMITS, lambda phase, fraction: phase is None, isolation=TESTS)
