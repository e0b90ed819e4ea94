"""noisy_layer: one layer's gradient signal-to-noise ratio is far below the rest of the model's."""

from __future__ import annotations

import math
import statistics

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements
from ..noise_stats import Interval
from .common import fmt, label_span

RULE_ID = "noisy_layer"
LIU2020 = "Liu et al. 2020, Understanding Why Neural Networks Generalize Well Through GSNR of Parameters"

# Layers of a healthy model sit within a few tenths of a decade of each other in log10 GSNR (the
# healthy zoo: at most 0.5 decades from the median, MAD <= 0.15). We flag a layer a full decade
# (10x) below the median of the other layers that is also an outlier among them by the robust
# z-score (median - x) / (1.4826 MAD) > 3.5 (Iglewicz & Hoaglin 1993); leaving the layer out keeps
# it from dragging the median toward itself in small models. A layer fed pure noise sits at GSNR ~ 1/n, the estimator's floor
# on a batch of n, so the rule can only see it once the other layers rise a decade above that floor.
DECADES = 1.0
ROBUST_Z = 3.5
MIN_LAYERS = 3
CONFIDENT = 0.8
UNSURE = 0.5


def _below_rest(name: str, logs: dict[str, float]) -> float | None:
    """Decades by which a layer sits below the median of the other layers, if it is a robust outlier there."""
    rest = [v for other, v in logs.items() if other != name]
    median = statistics.median(rest)
    spread = 1.4826 * statistics.median(abs(v - median) for v in rest)
    gap = median - logs[name]
    return gap if gap >= DECADES and (spread == 0 or gap / spread > ROBUST_Z) else None


def _outliers(gsnr: dict[str, Interval]) -> tuple[float, dict[str, float]]:
    """The median log10 GSNR and, for each layer far below the others, the median of the others."""
    logs = {name: math.log10(i.value) for name, i in gsnr.items() if i.value > 0}
    if len(logs) < MIN_LAYERS:
        return math.nan, {}
    low = {name: logs[name] + gap for name in logs if (gap := _below_rest(name, logs)) is not None}
    return statistics.median(logs.values()), low


def evaluate(m: Measurements) -> list[Finding]:
    """Fire on layers a decade or more below the median GSNR and robust outliers."""
    if m.noise is None:
        return []
    median, rest = _outliers(m.noise.layer_gsnr)
    flagged = list(rest)
    if not flagged:
        return []
    unsure = [n for n in flagged if (m.noise.layer_gsnr[n].high or math.inf) >= 10 ** (rest[n] - DECADES)]
    doubt = (
        f" The 95% interval of {label_span(unsure)} reaches within 10x of the other layers: treat it as a hint."
        if unsure
        else ""
    )
    values = ", ".join(f"{n} {fmt(m.noise.layer_gsnr[n].value)}" for n in flagged[:5])
    return [
        Finding(
            rule=RULE_ID,
            severity="warning",
            title="A layer's gradient is mostly noise",
            message=f"GSNR (mean over parameters of E[g]²/Var[g] across the batch's samples) is {values} in "
            f"{label_span(flagged)}, over 10x below the other layers' median (model median {fmt(10**median)}) (the floor on a batch of "
            f"{m.batch_size} is ~{fmt(1 / m.batch_size)}): its samples disagree on the direction, as when a layer "
            f"is fed inputs unrelated to the target.{doubt}",
            layers=flagged,
            evidence={
                "median_gsnr": 10**median,
                **{f"gsnr:{n}": m.noise.layer_gsnr[n].value for n in flagged[:20]},
                "interval_straddles_threshold": bool(unsure),
            },
            thresholds={"decades_below_median": DECADES, "robust_z": ROBUST_Z},
            remediation=[
                Remediation(
                    action="check_layer_inputs",
                    detail="Check that this layer's inputs carry information about the target (a mis-wired branch, "
                    "shuffled or random features, a wrong mask); if they should, a larger batch or weight decay on it "
                    "damps the noise its updates add (low-GSNR parameters generalise worse, Liu et al. 2020).",
                    references=[LIU2020],
                    params={"layers": ", ".join(flagged)},
                )
            ],
            confidence=UNSURE if unsure else CONFIDENT,
        )
    ]
