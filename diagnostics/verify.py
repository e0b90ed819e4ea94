"""The verify check: apply each finding's remediations to a copy of the parameters and train a short trial."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from gradhealth.report.schema import Finding, Remediation, RemediationParam, Verification, severity_at_least
from torch import Tensor

from .loading import LoadedModel
from .options import DEFAULT_OPTIMIZER, AnalysisOptions, OptimizerSpec
from .remedies import NOT_APPLICABLE_REASON, PARTIAL, REMEDIES, RemedyError, TrialSetup, apply_remedy
from .trial_model import lean_model
from .verify_trial import TrialOutcome, run_trial

# Re-run the rules on the model as a trial left it: (inputs, targets, optimizer) -> findings and raw metrics.
Remeasured = tuple[list[Finding], dict[str, float | None]]
Remeasure = Callable[[tuple[Tensor, ...], Tensor, OptimizerSpec], Remeasured]
Notify = Callable[[str, float], None]
__all__ = ["DEFAULT_OPTIMIZER", "CRITERION", "effect", "judge", "rank_by_verification", "refuted", "verify_findings"]

MARGIN = 0.10
CRITERION = (
    "no non-finite step, and one of: the baseline diverged while the remedy trains (loss falls); the relative "
    "loss decrease 1-L_K/L_0 is >= 10 points larger than the baseline's and the final loss is not higher; the "
    "final loss is >= 10% lower than the baseline's (same units); the finding's rule fires after the baseline "
    "trial and not after the remedy's (final loss not higher; for a remedy that changes the data, whose own rule "
    "then stops firing trivially: the findings it causes instead); fp16: the share of gradients flushed to zero "
    "falls under the rule's threshold (no loss condition: a converged model's loss need not fall)"
)


@dataclass
class VerifyStats:
    """What the check cost: trials run (baseline included) and optimizer steps taken."""

    trials: int = 0
    steps: int = 0


class _Snapshot:
    """The model's parameters, buffers and requires_grad flags, to start every trial from the same point."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.state = {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}
        self.flags = {n: p.requires_grad for n, p in module.named_parameters()}

    def restore(self, module: torch.nn.Module) -> None:
        """Put every tensor and flag back as it was."""
        with torch.no_grad():
            for key, value in module.state_dict(keep_vars=True).items():
                value.copy_(self.state[key])
        for name, p in module.named_parameters():
            p.grad = None
            p.requires_grad_(self.flags[name])


def _evidence(rule: str, remeasured: Remeasured, symptoms: frozenset[str] = frozenset()) -> dict[str, float | None]:
    """The measured metrics after a trial, whether the rule (and the symptoms it explains) still fire, its evidence."""
    findings, metrics = remeasured
    serious = [f for f in findings if severity_at_least(f.severity, "warning")]
    match = next((f for f in serious if f.rule == rule), None)
    evidence: dict[str, float | None] = {**metrics, "rule_fires": 0.0 if match is None else 1.0}
    if symptoms:
        evidence["symptoms_fire"] = 1.0 if any(f.rule in symptoms for f in serious) else 0.0
    if match is not None:
        for key, value in match.evidence.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                evidence[key] = float(value)
    return evidence


def judge(base: TrialOutcome, rem: TrialOutcome, finding: Finding, units_changed: bool, data_changed: bool) -> bool:
    """The stated criterion (CRITERION) for `improved`."""
    b, r = base.trajectory, rem.trajectory
    if r.non_finite_steps:
        return False
    limit = finding.thresholds.get("warning_fraction") if finding.rule == "fp16_underflow" else None
    flushed_b, flushed_r = b.evidence.get("fp16_flushed_fraction"), r.evidence.get("fp16_flushed_fraction")
    if (
        isinstance(limit, int | float)
        and flushed_b is not None
        and flushed_r is not None
        and flushed_r < limit <= flushed_b
    ):
        return True  # fp16: the gradients get through; a converged model's loss need not fall
    if rem.relative_decrease is None or rem.relative_decrease <= 0:
        return False  # a remedy must at least train: finite, and the loss falls
    if b.non_finite_steps:
        return rem.relative_decrease > 0
    b_final, r_final = b.loss[-1], r.loss[-1]
    same_units = not units_changed and b_final is not None and r_final is not None
    not_worse = not same_units or r_final <= b_final  # type: ignore[operator]  # a higher start must not buy it
    if base.relative_decrease is not None and rem.relative_decrease >= base.relative_decrease + MARGIN and not_worse:
        return True
    if same_units and r_final <= (1 - MARGIN) * b_final:  # type: ignore[operator]  # both checked above
        return True
    if same_units and not data_changed and b.evidence.get("rule_fires") == 1.0 and r.evidence.get("rule_fires") == 0.0:
        return r_final <= b_final  # type: ignore[operator]
    if same_units and b.evidence.get("symptoms_fire") == 1.0 and r.evidence.get("symptoms_fire") == 0.0:
        return r_final <= b_final  # type: ignore[operator]  # a data fix: its rule stops trivially, its symptoms do not
    return False


def effect(base: TrialOutcome, rem: TrialOutcome, units_changed: bool) -> float:
    """How far a remedy brought the loss down, in e-folds: log(L_0 / L_K) from the baseline's starting loss.

    Measured from the common start, a remedy that raises the starting loss pays for it, and one ending
    10^4 lower ranks above one that fell as far in relative terms from a loss 10^8 higher. A remedy whose
    loss is in other units (standardised targets) is measured from its own start. -inf: it did not train.
    """
    start = rem.trajectory.loss[0] if units_changed or not base.trajectory.loss else base.trajectory.loss[0]
    final = rem.trajectory.loss[-1] if rem.trajectory.loss else None
    if rem.relative_decrease is None or start is None or final is None or start <= 0 or final <= 0:
        return -math.inf
    return math.log(start / final)


class Verifier:
    """Runs the baseline once and one trial per applicable remediation, within the trial budget."""

    def __init__(
        self,
        loaded: LoadedModel,
        inputs: tuple[Tensor, ...],
        targets: Tensor,
        options: AnalysisOptions,
        remeasure: Remeasure,
    ) -> None:
        self.loaded, self.inputs, self.targets = loaded, inputs, targets
        self.options, self.remeasure = options, remeasure
        self.spec = options.optimizer or DEFAULT_OPTIMIZER
        self.stats = VerifyStats()
        self.baseline: tuple[TrialOutcome, Remeasured] | None = None
        self.baseline_error: str | None = None
        self.trials: dict[str, tuple[TrialOutcome, Remeasured, TrialSetup] | str] = {}  # by action and params
        self.remedy_trials = 0
        self.lean: LoadedModel | None = None  # the graph later trial steps run, built for the first trial

    def _setup(self) -> TrialSetup:
        """A fresh trial over the model's own parameters (restored before each trial)."""
        params: dict[str, Tensor] = {self.loaded.display_name(n): p for n, p in self.loaded.module.named_parameters()}
        trainable = {n for n, p in params.items() if p.requires_grad}
        inputs = tuple(t.detach() for t in self.inputs)  # the engine may have made them require grad
        return TrialSetup(params, inputs, self.targets.detach(), self.spec.lr, trainable, seed=0)

    def _params_for(self, finding: Finding, remediation: Remediation) -> dict[str, RemediationParam]:
        """The remediation's params; `layers` defaults to the finding's parameterised layers, `scheme` to `init`."""
        params = dict(remediation.params)
        if "layers" not in params:
            modules = {self.loaded.display_name(n).rsplit(".", 1)[0] for n, _ in self.loaded.module.named_parameters()}
            params["layers"] = [layer for layer in finding.layers if layer in modules]
        if "scheme" not in params and isinstance(params.get("init"), str):
            params["scheme"] = params["init"]
        return params

    def _trial(self, setup: TrialSetup) -> tuple[TrialOutcome, Remeasured]:
        """One trial, then the rules re-run on the trained copy; its own wall time goes into the trajectory."""
        if self.lean is None:
            self.lean = lean_model(self.loaded)  # shared by every trial, like the baseline
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(setup.seed)
            steps, precision = self.options.verify_steps, self.options.precision
            outcome = run_trial(self.loaded, setup, self.spec, steps, precision, self.lean)
            spec = self.spec.model_copy(update={"lr": setup.lr})
            found = self.remeasure(setup.inputs, setup.targets, spec)
        outcome.trajectory.seconds = round(time.perf_counter() - start, 6)
        self.stats.trials += 1
        self.stats.steps += outcome.steps_run
        return outcome, found

    def _optimizer(self, lr: float) -> dict[str, float | str | None]:
        """The trial's optimizer, as the report shows it."""
        spec = self.spec
        return {"name": spec.name, "lr": lr, "momentum": spec.momentum, "weight_decay": spec.weight_decay}

    def _run_baseline(self, snapshot: _Snapshot) -> str | None:
        """Run the shared baseline once; the reason when it cannot run (every verification then fails)."""
        if self.baseline is None and self.baseline_error is None:
            snapshot.restore(self.loaded.module)
            try:
                self.baseline = self._trial(self._setup())
            except Exception as exc:  # the model cannot train as uploaded: say so, keep the analysis
                self.baseline_error = f"the baseline trial failed: {type(exc).__name__}: {str(exc)[:300]}"
            finally:
                snapshot.restore(self.loaded.module)
        return self.baseline_error

    def verify(
        self, finding: Finding, remediation: Remediation, snapshot: _Snapshot, symptoms: frozenset[str] = frozenset()
    ) -> tuple[Verification, float]:
        """The verification of one remediation and its measured effect (for ranking); symptoms: rules it causes."""
        params = self._params_for(finding, remediation)
        key = json.dumps([remediation.action, params], sort_keys=True, default=str)
        if key not in self.trials:
            if self.remedy_trials >= self.options.verify_max_trials:
                reason = f"trial budget spent ({self.options.verify_max_trials} remediation trials per analysis)"
                return Verification(status="not_applicable", reason=reason), -math.inf
            self.trials[key] = self._remedy_trial(remediation.action, params, snapshot)
        ran = self.trials[key]
        if isinstance(ran, str):
            return Verification(status="failed", reason=ran, optimizer=self._optimizer(self.spec.lr)), -math.inf
        assert self.baseline is not None
        (base, base_found), (rem, found, setup) = self.baseline, ran
        base_traj = base.trajectory.model_copy(deep=True)
        base_traj.evidence.update(_evidence(finding.rule, base_found, symptoms))
        rem_traj = rem.trajectory.model_copy(deep=True)
        rem_traj.evidence.update(_evidence(finding.rule, found, symptoms))
        improved = judge(
            TrialOutcome(base_traj, base.steps_run, base.relative_decrease),
            TrialOutcome(rem_traj, rem.steps_run, rem.relative_decrease),
            finding,
            setup.loss_units_changed,
            setup.data_changed,
        )
        result = Verification(
            status="verified" if improved else "not_improved",
            reason=PARTIAL.get(remediation.action),
            steps=self.options.verify_steps,
            optimizer=self._optimizer(setup.lr),
            baseline=base_traj,
            remediated=rem_traj,
            improved=improved,
            criterion=CRITERION,
        )
        return result, effect(base, rem, setup.loss_units_changed)

    def _remedy_trial(
        self, action: str, params: dict[str, RemediationParam], snapshot: _Snapshot
    ) -> tuple[TrialOutcome, Remeasured, TrialSetup] | str:
        """Apply the remedy to a fresh copy and train; the reason instead when it cannot be applied or run."""
        try:
            apply_remedy(action, params, self._setup())  # validate before paying for the baseline
        except RemedyError as exc:
            return str(exc)
        finally:
            snapshot.restore(self.loaded.module)
        error = self._run_baseline(snapshot)
        if error is not None:
            return error
        setup = self._setup()
        apply_remedy(action, params, setup)
        self.remedy_trials += 1
        try:
            outcome, found = self._trial(setup)
        except Exception as exc:  # a remedy can make the model fail (e.g. a dtype it cannot take)
            return f"the trial failed: {type(exc).__name__}: {str(exc)[:300]}"
        finally:
            snapshot.restore(self.loaded.module)
        return outcome, found, setup


_STATUS_RANK = {"verified": 0, "not_improved": 1, "failed": 2, "not_applicable": 3}


def verify_findings(
    loaded: LoadedModel,
    findings: list[Finding],
    inputs: tuple[Tensor, ...],
    targets: Tensor,
    options: AnalysisOptions,
    remeasure: Remeasure,
    notify: Notify,
) -> VerifyStats:
    """Attach a verification to every remediation of the findings at warning or above; rank by effect."""
    todo = [f for f in findings if severity_at_least(f.severity, "warning")]
    applicable = sum(1 for f in todo for r in f.remediation if r.action in REMEDIES)
    verifier = Verifier(loaded, inputs, targets, options, remeasure)
    snapshot = _Snapshot(loaded.module) if applicable else None
    done = 0
    try:
        for finding in todo:
            effects: dict[int, float] = {}
            for remediation in finding.remediation:
                if remediation.action not in REMEDIES or snapshot is None:
                    remediation.verification = Verification(status="not_applicable", reason=NOT_APPLICABLE_REASON)
                    continue
                notify("verify", 0.96 + 0.03 * done / max(applicable, 1))
                symptoms = frozenset(f.rule for f in todo if finding.rule in f.caused_by)
                remediation.verification, effects[id(remediation)] = verifier.verify(
                    finding, remediation, snapshot, symptoms
                )
                done += 1
            finding.remediation.sort(key=lambda r: _order(r, effects))
        findings[:] = rank_by_verification(findings)
    finally:
        if snapshot is not None:
            snapshot.restore(loaded.module)
    return verifier.stats


def refuted(finding: Finding) -> bool:
    """Its remediations were tried and none verified: the measurement says it is not the fix to do first."""
    statuses = {r.verification.status for r in finding.remediation if r.verification is not None}
    return bool(statuses & {"not_improved", "failed"}) and "verified" not in statuses


def rank_by_verification(findings: list[Finding]) -> list[Finding]:
    """Among the findings at warning or above, those whose tried remedies all failed move behind the rest.

    The rules rank a root cause before its symptoms; when the cause's remediation was measured not to
    help and a symptom's was verified, the verified fix is what a reader (or a tool applying the first
    remediation) must see first. Findings with only structural advice keep their place; order is stable.
    """
    serious = [f for f in findings if severity_at_least(f.severity, "warning")]
    rest = [f for f in findings if not severity_at_least(f.severity, "warning")]
    return sorted(serious, key=refuted) + rest


def _order(remediation: Remediation, effects: dict[int, float]) -> tuple[int, float]:
    """Verified first, by measured effect (lowest final loss); then not improved, failed, not applicable."""
    status = remediation.verification.status if remediation.verification else "not_applicable"
    return _STATUS_RANK[status], -effects.get(id(remediation), 0.0) if status == "verified" else 0.0
