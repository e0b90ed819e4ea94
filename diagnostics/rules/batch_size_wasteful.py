"""batch_size_wasteful: the batch is far above the gradient noise scale, so most of its compute buys nothing."""

from __future__ import annotations

import math

from gradhealth.report import Finding, Remediation

from ..measurements import Measurements
from .common import fmt

RULE_ID = "batch_size_wasteful"
MCCANDLISH2018 = "McCandlish et al. 2018, An Empirical Model of Large-Batch Training"

# McCandlish et al.: steps S = S_min (1 + B_noise/B) and examples E = E_min (1 + B/B_noise). At
# B = 10 B_noise a step costs 11x the minimal compute for a 10% saving in steps, while B = 2 B_noise
# would take 1.36x the steps at a quarter of that compute: 10x is where we call the batch wasteful.
WASTE = 10.0
SUGGESTED_MULTIPLE = 2.0  # suggest B = 2 B_noise: steps within 1.5x S_min at 3x E_min
CONFIDENT = 0.8
UNSURE = 0.5


def _power_of_two_at_least(value: float) -> int:
    """Batch sizes are conventionally powers of two: the smallest one at or above value."""
    return int(2 ** max(0, math.ceil(math.log2(max(value, 1.0)))))


def _lr_scale(noise: float, batch: int, suggested: int) -> float:
    """McCandlish's optimal lr eps(B) = eps_max / (1 + B_noise/B): the factor from batch to suggested."""
    return (1 + noise / batch) / (1 + noise / suggested)


def _remediation(noise: float, batch: int, m: Measurements) -> Remediation:
    """A smaller batch near 2 B_noise, with the lr scaled as McCandlish's model says."""
    suggested = _power_of_two_at_least(SUGGESTED_MULTIPLE * noise)
    scale = _lr_scale(noise, batch, suggested)
    opt = m.options.optimizer
    lr = None if opt is None else float(f"{opt.lr * scale:.2g}")
    lr_text = f" and lr≈{fmt(lr)} (×{fmt(scale)}, the optimal lr falls with the batch)" if lr else ""
    return Remediation(
        action="reduce_batch_size",
        detail=f"Train with batch_size≈{suggested}{lr_text}, or keep the batch and take fewer, larger-lr steps "
        "only if the lr is still below its stability limit. B_noise grows as training proceeds, so re-check later.",
        snippet=f"loader = torch.utils.data.DataLoader(dataset, batch_size={suggested}, shuffle=True)",
        references=[MCCANDLISH2018],
        params={"batch_size": suggested, "lr": lr},
    )


def evaluate(m: Measurements) -> list[Finding]:
    """Fire when the batch is at least 10x the simple noise scale B_simple."""
    noise = None if m.noise is None else m.noise.estimates.get("gradient_noise_scale")
    if noise is None or not 0 < noise.value < math.inf or m.batch_size < WASTE * noise.value:
        return []
    high = noise.high
    sure = high is not None and m.batch_size >= WASTE * high
    interval = f"[{fmt(noise.low)}, {fmt(high)}]"
    suggested = _power_of_two_at_least(SUGGESTED_MULTIPLE * noise.value)
    steps = (1 + noise.value / suggested) / (1 + noise.value / m.batch_size)
    compute = (1 + m.batch_size / noise.value) / (1 + suggested / noise.value)
    doubt = "" if sure else f" Its 95% interval {interval} reaches past batch/{fmt(WASTE)}: this may not be wasteful."
    return [
        Finding(
            rule=RULE_ID,
            severity="warning",
            title="Batch far larger than the gradient noise scale",
            message=f"The gradient noise scale B_simple = tr(Σ)/|G|² is {fmt(noise.value)} (interval {interval}), "
            f"{fmt(m.batch_size / noise.value)}x below the batch of {m.batch_size}. By McCandlish et al.'s model a "
            f"batch of {suggested} needs only {fmt(steps)}x the steps of this one at {fmt(1 / compute)}x its compute: "
            f"most of each step's examples repeat what the others say.{doubt}",
            evidence={
                "gradient_noise_scale": noise.value,
                "gradient_noise_scale_low": noise.low,
                "gradient_noise_scale_high": high,
                "batch_size": m.batch_size,
                "interval_straddles_threshold": not sure,
            },
            thresholds={"batch_over_noise_scale": WASTE},
            remediation=[_remediation(noise.value, m.batch_size, m)],
            confidence=CONFIDENT if sure else UNSURE,
        )
    ]
