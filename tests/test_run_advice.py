"""Run-report advice carries the params it implies, computed from the healthy part of the run (issue 14)."""

from __future__ import annotations

import numpy as np

from . import run_fixtures as fx
from .test_run_rules import evaluate, findings, global_norm, of


def _clips(name: str) -> list[float]:
    return [float(r.params["max_norm"]) for f in findings(name) for r in f.remediation if r.action == "clip_gradients"]


BLOW_UP = 100


def _long_divergence() -> fx.Stream:
    """A falling run whose gradients and loss grow 1.5x per step from step 100 and stay ~1e10 (finite) for 200 steps."""
    s = fx.falling_run(seed=3, noise=0.1, n=400)
    growth = np.minimum(1.5 ** np.arange(len(s.steps) - BLOW_UP), 1e10)
    s.metrics["grad_norm"][BLOW_UP:] *= growth[:, None]
    s.metrics["grad_max_abs"][BLOW_UP:] *= growth[:, None]
    s.loss[BLOW_UP:] *= growth
    return s


def test_clip_norm_after_a_divergence_comes_from_the_norms_before_it() -> None:
    """Most logged norms are exploded: their p90 (the old clip) never binds; the calm norms' p90 does."""
    s = _long_divergence()
    found = evaluate(s).findings()
    norms = global_norm(s)
    healthy_p90 = float(np.quantile(norms[:BLOW_UP], 0.9))
    assert np.quantile(norms, 0.9) > 1e6 * healthy_p90  # what the clip was computed from before
    clips = [float(r.params["max_norm"]) for f in found for r in f.remediation if r.action == "clip_gradients"]
    assert clips, [f.rule for f in found]
    for max_norm in clips:  # the histogram's bins are ~6% wide, the norms before the climb is noticed a few more
        assert healthy_p90 / 1.5 <= max_norm <= healthy_p90 * 1.5, (max_norm, healthy_p90)


def test_a_learning_rate_blow_up_gets_no_guard_op_hint() -> None:
    """The NaN at the end of a divergence is no log/sqrt/div: no guard_op, but a lower lr and a calm clip."""
    for name in ("diverge_sgd", "single_layer_nan", "nan_gradient"):
        actions = [r.action for f in findings(name) for r in f.remediation]
        assert "guard_op" not in actions, (name, actions)
    (nan,) = of("diverge_sgd", "non_finite")
    assert [r.action for r in nan.remediation][:2] == ["lower_lr", "clip_gradients"]
    assert "blew up" in nan.message or "divergence" in nan.message


def test_divergence_advises_the_lr_it_was_stable_at() -> None:
    (div,) = of("diverge_sgd", "loss_divergence")
    lowered = [r for r in div.remediation if r.action == "lower_lr"]
    assert lowered and lowered[0].params["lr"] == 0.05


def test_a_stalled_layer_gets_unfreeze_with_its_parameters() -> None:
    (stall,) = of("freeze_mid_run", "stalled_layer", "warning")
    unfreeze = stall.remediation[0]
    assert unfreeze.action == "unfreeze"
    assert unfreeze.params["parameters"] == [f"{fx.FREEZE_LAYER}.*"]
    assert f"'{fx.FREEZE_LAYER}.*'" in (unfreeze.snippet or "")


def test_a_run_report_gives_one_lower_lr() -> None:
    """diverge_sgd: the divergence knows the stable lr (0.05), the NaN after it only the last (3): one answer, 0.05."""
    advised = {r.params["lr"] for f in findings("diverge_sgd") for r in f.remediation if r.action == "lower_lr"}
    assert advised == {0.05}
    assert len({f.rule for f in findings("diverge_sgd") if any(r.action == "lower_lr" for r in f.remediation)}) >= 2
