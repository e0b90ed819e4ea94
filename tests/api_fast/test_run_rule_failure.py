"""A run rule that raises costs its own verdicts only: every batch is still stored and the report says what failed."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from gradhealth.diagnostics.run_rules import LogChunk, RunEvaluator, evaluator
from gradhealth.diagnostics.run_rules.chunk import ChunkView
from gradhealth.diagnostics.run_rules.common import RunContext
from gradhealth.report import Finding

from .conftest import Project

LAYERS = [{"name": f"net.{i}", "type": "Linear", "num_parameters": 100} for i in range(3)]


class BrokenRule:
    """A rule with a bug: it fails on every chunk after the first."""

    rule_id: ClassVar[str] = "broken_rule"

    def __init__(self, num_layers: int, state: dict[str, Any] | None = None) -> None:
        self.chunks = int((state or {}).get("chunks", 0))

    def update(self, v: ChunkView) -> None:
        self.chunks += 1  # changed before it fails: the evaluator must restore the state it had
        if self.chunks > 1:
            raise ZeroDivisionError("a bug in a rule")

    def findings(self, ctx: RunContext) -> list[Finding]:
        return []

    def summary(self) -> dict[str, float | int | None]:
        return {}

    def state(self) -> dict[str, Any]:
        return {"chunks": self.chunks}


def _batch(seq: int, first: int, n: int, loss: float) -> dict[str, Any]:
    """A batch whose loss jumps to `loss` (a divergence the healthy rules must still see)."""
    steps = list(range(first, first + n))
    return {
        "seq": seq,
        "steps": steps,
        "loss": [loss * (1.5 ** (s - first)) if loss > 10 else 2.0 - 0.001 * s for s in steps],
        "lr": [0.01] * n,
        "metrics": {"grad_norm": [[0.5, 0.5, 0.5] for _ in steps]},
    }


def test_a_failing_rule_never_blocks_ingest(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluator, "RULES", (*evaluator.RULES, BrokenRule))
    run = project.post("/v1/runs", {"name": "rule-bug", "layers": LAYERS, "metrics": ["grad_norm"]})
    assert run.status_code == 201, run.text
    run_id = run.json()["id"]
    for seq, (first, loss) in enumerate([(0, 2.0), (100, 2.0), (200, 1e3)]):
        ack = project.post(f"/v1/runs/{run_id}/logs", _batch(seq, first, 100, loss))
        assert ack.status_code == 200, ack.text
        assert ack.json()["stored"] is True
    report = project.get(f"/v1/runs/{run_id}/report").json()
    assert report["metrics"]["steps"] == 300
    [skipped] = report["skipped"]
    assert skipped["check"] == "run_rule.broken_rule" and "ZeroDivisionError: a bug in a rule" in skipped["reason"]
    assert "steps up to 99" in skipped["reason"]  # where it first failed: on the second batch
    assert any(f["rule"] == "loss_divergence" for f in report["findings"])  # the other rules still judged the run


def test_a_failed_update_leaves_the_rule_as_before_the_chunk_and_the_failure_in_the_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(evaluator, "RULES", (*evaluator.RULES, BrokenRule))
    ev = RunEvaluator([layer["name"] for layer in LAYERS])
    for first in (0, 10):
        steps = np.arange(first, first + 10)
        ev.update(LogChunk.of(steps, np.full(10, 2.0), np.full(10, 0.01), {"grad_norm": np.ones((10, 3))}))
    state = ev.state()
    assert state["rules"]["broken_rule"] == {"chunks": 1}  # restored, not the half-done 2
    assert "ZeroDivisionError" in state["failures"]["broken_rule"]
    assert RunEvaluator([layer["name"] for layer in LAYERS], state).failures == state["failures"]
