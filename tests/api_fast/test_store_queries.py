"""Store query functions on SQLite: the idempotency race, and one page() for every list."""

from __future__ import annotations

from typing import Any

import pytest
from gradhealth.store import idempotency, rows
from gradhealth.store.db import session_scope
from gradhealth.store.models import TrainingRun

from .conftest import Project

REQUEST = {"name": "r", "layers": "[]", "metrics": "[]", "config": "{}", "webhook_url": None}


def lose_the_race(monkeypatch: pytest.MonkeyPatch, project: Project, winner: dict[str, Any]) -> None:
    """The first replay() finds nothing, and by the insert another request has committed `winner` under the key."""
    real = idempotency.replay
    calls = iter([False])

    def replay(*args: Any) -> Any:
        if next(calls, True):
            return real(*args)
        with session_scope(project.settings) as other:
            other.add(TrainingRun(project_id=project.id, idempotency_key="k", webhook_secret="s", **winner))
        return None

    monkeypatch.setattr(idempotency, "replay", replay)


def test_a_lost_race_answers_the_winner(monkeypatch: pytest.MonkeyPatch, project: Project) -> None:
    lose_the_race(monkeypatch, project, REQUEST)
    with session_scope(project.settings) as session:
        row, created = idempotency.create_once(session, TrainingRun, project.id, "k", REQUEST, {"webhook_secret": "x"})
        assert not created and row.webhook_secret == "s"  # the winner's row, not ours


def test_a_lost_race_against_another_body_is_key_reused(monkeypatch: pytest.MonkeyPatch, project: Project) -> None:
    lose_the_race(monkeypatch, project, REQUEST | {"name": "other"})
    with session_scope(project.settings) as session, pytest.raises(idempotency.KeyReused) as caught:
        idempotency.create_once(session, TrainingRun, project.id, "k", REQUEST, {"webhook_secret": "x"})
    assert caught.value.fields == ["name"]


def test_page_counts_everything_and_returns_one_slice_in_order(project: Project) -> None:
    with session_scope(project.settings) as session:
        for index in range(5):
            session.add(TrainingRun(project_id=project.id, webhook_secret="s", **(REQUEST | {"name": f"r{index}"})))
    with session_scope(project.settings) as session:
        where, order = [TrainingRun.project_id == project.id], [TrainingRun.name.desc()]
        found = rows.page(session, TrainingRun, where, order, limit=2, offset=1)
        assert found.count == 5 and [row.name for row in found.rows] == ["r3", "r2"]
        assert rows.page(session, TrainingRun, where, order, limit=2, offset=5).rows == []
