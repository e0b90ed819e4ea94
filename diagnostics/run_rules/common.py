"""What every run rule shares: the context it reports in, references and common remediations."""

from __future__ import annotations

from dataclasses import dataclass

from gradhealth.report import Finding, Remediation

from ..rules.common import REFS, fmt
from ..rules.common import clip_remediation as clip_gradients
from ..rules.common import span as _span

__all__ = [
    "REFS",
    "RUN_REFS",
    "RunContext",
    "clip_remediation",
    "fmt",
    "label",
    "lower_lr_remediation",
    "merged_note",
    "one_lower_lr",
    "span",
    "steps_where",
]

RUN_REFS = {
    "chowdhery2022": "Chowdhery et al. 2022, PaLM (section 5.1: on a loss spike, restart ~100 steps earlier and skip the "
    "offending batches)",
    "goyal2017": "Goyal et al. 2017, Accurate, Large Minibatch SGD (gradual learning-rate warm-up)",
    "rousseeuw1993": "Rousseeuw & Croux 1993, Alternatives to the Median Absolute Deviation",
    "plateau_scheduler": "PyTorch docs: torch.optim.lr_scheduler.ReduceLROnPlateau",
    "smith2017": "Smith 2017, Cyclical Learning Rates for Training Neural Networks (LR range test)",
    "torch_freeze": "PyTorch docs: requires_grad and optimizer param_groups (a parameter without a gradient is "
    "skipped by every torch.optim optimizer)",
}


@dataclass(frozen=True)
class RunContext:
    """Run-level facts a rule may quote when it writes its findings."""

    layers: list[str]
    last_step: int | None
    last_lr: float | None
    max_norm: float | None  # suggested clip threshold: p90 of the calm norms (before the first spike/NaN/climb)
    activations: tuple[str, ...] = ()  # the run's activation modules (watch(activations=...)), in column order
    norm_p90: float | None = None  # p90 of all global norms seen, diverged steps included
    calm_clip: bool = False  # max_norm is the calm part's p90 (False: all norms', a state stored before calm)


def label(name: str) -> str:
    """A layer name for a sentence: the root module's path is the empty string."""
    return name or "(root module)"


def span(names: list[str]) -> str:
    """Name a run of layers compactly, as the checkpoint rules do."""
    return _span([label(n) for n in names])


def steps_where(start: int, last: int) -> str:
    """An episode's extent as titles and messages name it: 'step 7' or 'steps 7–12'."""
    return f"step {start}" if last == start else f"steps {start}–{last}"


def merged_note(merged: int, what: str) -> str:
    """The sentence saying how many later episodes an episode absorbed, so its counts are read right."""
    return f" {merged} later {what}(s) are merged into this one." if merged else ""


def round2(x: float) -> float:
    """Two significant digits, for parameters a user will paste."""
    return float(f"{x:.2g}")


def clip_remediation(ctx: RunContext) -> Remediation:
    """clip_grad_norm_ at the 90th percentile of the calm global norms (Pascanu et al. 2013)."""
    value = "1.0" if ctx.max_norm is None else f"{ctx.max_norm}"
    basis = (
        "the 90th percentile of the norms this run logged before it first spiked, overflowed or climbed "
        "(exploded steps would set a clip that never binds)"
        if ctx.calm_clip
        else "the 90th percentile of the norms this run has logged"
    )
    detail = f"Clip the global gradient norm at max_norm≈{value}, {basis}: ordinary steps pass untouched, the outliers are scaled down."
    return clip_gradients(ctx.max_norm, detail, default=1.0)


def lower_lr_remediation(lr: float | None, factor: float, why: str) -> Remediation:
    """Lower the learning rate by `factor` (from the logged lr when there is one)."""
    target = None if lr is None or lr <= 0 else round2(lr / factor)
    detail = f"Lower the learning rate about {factor:g}x{f' (to ≈{fmt(target)})' if target else ''}: {why}"
    snippet = (
        f"for group in optimizer.param_groups:\n    group['lr'] = {target}"
        if target
        else f"for group in optimizer.param_groups:\n    group['lr'] /= {factor:g}"
    )
    return Remediation(
        action="lower_lr",
        detail=detail,
        snippet=snippet,
        references=[REFS["cohen2021"]],
        params={"lr": target, "factor": 1 / factor},
    )


def one_lower_lr(findings: list[Finding]) -> None:
    """One lr answer per run report: every lower_lr takes the lowest lr any finding advises.

    A divergence knows the lr the run was stable at (0.05 before a jump to 3); a NaN at its end only
    knows the last lr (3, so lr/3 = 1): both must not be advised side by side.
    """
    advised = [
        float(lr)
        for f in findings
        for r in f.remediation
        if r.action == "lower_lr" and isinstance(lr := r.params.get("lr"), float | int)
    ]
    if len(set(advised)) < 2:
        return
    lowest = min(advised)
    for finding in findings:
        for r in finding.remediation:
            if r.action == "lower_lr" and isinstance(r.params.get("lr"), float | int) and r.params["lr"] != lowest:
                r.params = {"lr": lowest}
                r.detail = f"Lower the learning rate to ≈{fmt(lowest)}, the lowest lr this report advises."
                r.snippet = f"for group in optimizer.param_groups:\n    group['lr'] = {lowest}"
